//! Benchmark report: a Markdown file per run, an SVG chart of the headline ratios, and the
//! README's benchmark section replaced by the latest run of every scenario.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use super::{Bench, version_of};

const README_START: &str = "<!-- bench:start -->";
const README_END: &str = "<!-- bench:end -->";

/// One scenario's results.
pub struct Section {
    pub title: String,
    pub intro: String,
    /// First row is the header.
    pub table: Vec<Vec<String>>,
    /// Ratios for the chart: (label, value, target). A target of 0 means none.
    pub headline: Vec<(String, f64, f64)>,
    pub notes: Vec<String>,
}

pub struct Report {
    machine: Vec<String>,
    sections: Vec<Section>,
}

impl Report {
    pub fn new(bench: &Bench) -> Result<Self> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = version_of(Path::new("uname"), &["-r"]);
        Ok(Self {
            machine: vec![
                format!("CPU: {cpu}, {cores} cores"),
                format!("Kernel: {kernel}"),
                format!("nginx: {}", version_of(Path::new("nginx"), &["-v"])),
                format!("HAProxy: {}", version_of(Path::new("haproxy"), &["-v"])),
                format!(
                    "Load generator: {} (and `cargo xtask load` for per-key and per-source load)",
                    version_of(&bench.oha(), &["--version"])
                ),
                format!(
                    "Gateway: {}, as `cargo xtask build` makes it (LTO and profile-guided \
                     optimization)",
                    version_of(&bench.gateway, &["--version"])
                ),
                format!(
                    "Runs per figure: {}, {} s each; figures are median (min–max)",
                    bench.plan.runs, bench.plan.secs
                ),
            ],
            sections: Vec::new(),
        })
    }

    pub fn add(&mut self, section: Section) {
        self.sections.push(section);
    }

    /// Writes `bench/results/<timestamp>.md` and `.svg`; a run of every scenario also replaces the
    /// README's section (a run of one scenario would leave the README with that scenario only).
    pub fn write(&self, root: &Path, complete: bool) -> Result<PathBuf> {
        let stamp = utc_stamp();
        let dir = root.join("bench/results");
        std::fs::create_dir_all(&dir)?;
        let svg_name = format!("{stamp}.svg");
        std::fs::write(dir.join(&svg_name), self.chart())?;
        let body = self.markdown(&format!("results/{svg_name}"));
        let md_path = dir.join(format!("{stamp}.md"));
        std::fs::write(
            &md_path,
            format!("# Benchmark {stamp}\n\n{}", self.markdown(&svg_name)),
        )?;
        if complete {
            self.update_readme(root, &stamp, &body)?;
        } else {
            eprintln!("one scenario only: README's benchmark section left as it is");
        }
        Ok(md_path)
    }

    fn markdown(&self, chart: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Machine:\n");
        for line in &self.machine {
            let _ = writeln!(out, "- {line}");
        }
        let _ = writeln!(out, "\n![headline ratios]({chart})\n");
        for (title, lines) in [
            ("Headline ratios against their targets", self.verdicts()),
            ("Other ratios (no target)", self.untargeted()),
        ] {
            if !lines.is_empty() {
                let _ = writeln!(out, "{title}:\n");
                for line in lines {
                    let _ = writeln!(out, "- {line}");
                }
                let _ = writeln!(out);
            }
        }
        for section in &self.sections {
            let _ = writeln!(out, "### {}\n\n{}\n", section.title, section.intro);
            for (i, row) in section.table.iter().enumerate() {
                let _ = writeln!(out, "| {} |", row.join(" | "));
                if i == 0 {
                    let _ = writeln!(out, "|{}", " --- |".repeat(row.len()));
                }
            }
            let _ = writeln!(out);
            for note in &section.notes {
                let _ = writeln!(out, "- {note}");
            }
            if !section.notes.is_empty() {
                let _ = writeln!(out);
            }
        }
        out
    }

    /// One line per headline ratio that has a target, saying plainly whether this run met it.
    fn verdicts(&self) -> Vec<String> {
        self.sections
            .iter()
            .flat_map(|section| &section.headline)
            .filter(|(_, _, target)| *target > 0.0)
            .map(|(label, value, target)| {
                let verdict = if value >= target {
                    "met"
                } else {
                    "**not met**"
                };
                format!("{label}: {value:.2} (target >= {target}): {verdict}")
            })
            .collect()
    }

    /// The headline ratios without a target (comparisons, noise controls), for the record.
    fn untargeted(&self) -> Vec<String> {
        self.sections
            .iter()
            .flat_map(|section| &section.headline)
            .filter(|(_, _, target)| *target <= 0.0)
            .map(|(label, value, _)| format!("{label}: {value:.2}"))
            .collect()
    }

    fn update_readme(&self, root: &Path, stamp: &str, body: &str) -> Result<()> {
        let path = root.join("README.md");
        let readme = std::fs::read_to_string(&path)?;
        let (Some(start), Some(end)) = (readme.find(README_START), readme.find(README_END)) else {
            eprintln!("README has no benchmark markers; not updated");
            return Ok(());
        };
        let body = body.replace("](results/", "](bench/results/");
        let section = format!(
            "{README_START}\nLatest run: `bench/results/{stamp}.md` (`cargo xtask bench`).\n\n{body}{README_END}"
        );
        let updated = format!(
            "{}{}{}",
            &readme[..start],
            section,
            &readme[end + README_END.len()..]
        );
        std::fs::write(&path, updated).context("cannot update README.md")
    }

    /// Horizontal bars of the headline ratios, with their targets marked.
    fn chart(&self) -> String {
        let bars: Vec<&(String, f64, f64)> =
            self.sections.iter().flat_map(|s| &s.headline).collect();
        let (width, row, left, top) = (900.0, 28.0, 420.0, 40.0);
        let scale_max = bars
            .iter()
            .map(|(_, v, t)| v.max(*t))
            .fold(1.2_f64, f64::max);
        let plot = width - left - 60.0;
        let x = |v: f64| left + plot * (v / scale_max);
        let height = top + row * bars.len() as f64 + 30.0;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Headline ratios (median; | = target)</text>\n"
        );
        for (i, (label, value, target)) in bars.iter().enumerate() {
            let y = top + row * i as f64;
            let color = if *target > 0.0 && value < target {
                "#d9534f"
            } else {
                "#4a90d9"
            };
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
                 <rect x=\"{left}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"{color}\"/>\
                 <text x=\"{:.1}\" y=\"{}\">{value:.2}</text>",
                left - 8.0,
                y + 15.0,
                escape(label),
                y + 3.0,
                (x(*value) - left).max(1.0),
                row - 8.0,
                x(*value) + 4.0,
                y + 15.0,
            );
            if *target > 0.0 {
                let _ = writeln!(
                    svg,
                    "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1}\" y2=\"{2}\" stroke=\"black\" stroke-width=\"2\"/>",
                    x(*target),
                    y,
                    y + row - 2.0
                );
            }
        }
        let _ = writeln!(
            svg,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{1}\" stroke=\"#999\" stroke-dasharray=\"4\"/>\n</svg>",
            x(1.0),
            height - 30.0
        );
        svg
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn utc_stamp() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H%M%SZ"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown-time".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_say_which_targets_a_run_missed() {
        let report = Report {
            machine: Vec::new(),
            sections: vec![Section {
                title: String::new(),
                intro: String::new(),
                table: Vec::new(),
                headline: vec![
                    ("a / b".into(), 0.94, 1.0),
                    ("c / d".into(), 0.7, 0.5),
                    ("no target".into(), 0.4, 0.0),
                ],
                notes: Vec::new(),
            }],
        };
        assert_eq!(
            report.verdicts(),
            [
                "a / b: 0.94 (target >= 1): **not met**",
                "c / d: 0.70 (target >= 0.5): met"
            ]
        );
        assert_eq!(report.untargeted(), ["no target: 0.40"]);
    }
}
