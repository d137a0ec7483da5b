//! Reading the gateway's own `/metrics` text back: enough of the OpenMetrics text format for
//! the samples it writes (`name{label="value",...} number`).

use std::collections::BTreeMap;

/// The samples of one scrape.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<Sample>);

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Samples {
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|line| !line.starts_with('#') && !line.is_empty())
                .filter_map(parse_line)
                .collect(),
        )
    }

    /// The sum of `name`'s samples grouped by one label's value.
    pub fn sum_by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut sums = BTreeMap::new();
        for sample in self.0.iter().filter(|sample| sample.name == name) {
            let key = sample
                .labels
                .iter()
                .find(|(key, _)| key == label)
                .map_or_else(String::new, |(_, value)| value.clone());
            *sums.entry(key).or_insert(0.0) += sample.value;
        }
        sums
    }

    /// The sum of `name`'s samples whose labels match `filter`.
    pub fn sum(&self, name: &str, filter: impl Fn(&str, &str) -> bool) -> f64 {
        self.0
            .iter()
            .filter(|sample| sample.name == name)
            .filter(|sample| sample.labels.iter().all(|(key, value)| filter(key, value)))
            .map(|sample| sample.value)
            .sum()
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
        None => (series, Vec::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `a="x",b="y"`; values may hold escaped quotes and commas.
fn parse_labels(mut text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (index, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break index,
                c => value.push(c),
            }
        };
        labels.push((key.trim_start_matches(',').to_owned(), value));
        text = rest[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_by_a_label_including_escaped_values() {
        let text = "# TYPE mcp_gateway_requests counter\n\
            mcp_gateway_requests_total{decision=\"forwarded\",method=\"tools/call\",caller=\"alice\"} 3\n\
            mcp_gateway_requests_total{decision=\"forwarded\",method=\"list\",caller=\"bob\"} 2\n\
            mcp_gateway_requests_total{decision=\"rate_limited\",method=\"tools/call\",caller=\"a\\\"b,c\"} 5\n\
            mcp_gateway_open_connections 4\n";
        let samples = Samples::parse(text);
        let by_decision = samples.sum_by("mcp_gateway_requests_total", "decision");
        assert_eq!(by_decision["forwarded"], 5.0);
        assert_eq!(by_decision["rate_limited"], 5.0);
        let by_caller = samples.sum_by("mcp_gateway_requests_total", "caller");
        assert_eq!(by_caller["a\"b,c"], 5.0);
        assert_eq!(
            samples.sum("mcp_gateway_open_connections", |_, _| true),
            4.0
        );
    }
}
