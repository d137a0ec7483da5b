//! Server-sent events, as far as the gateway reads them: where an event ends, what data it carries,
//! and the same event with other data. Everything else of a stream passes as it came.

use bytes::BytesMut;

/// Where the first complete event of `bytes` ends (after its blank line).
pub fn event_end(bytes: &[u8]) -> Option<usize> {
    // SSE lines end in CRLF, LF or CR; a blank line ends the event.
    ["\r\n\r\n", "\n\n", "\r\r"]
        .iter()
        .filter_map(|blank| {
            bytes
                .windows(blank.len())
                .position(|window| window == blank.as_bytes())
                .map(|at| at + blank.len())
        })
        .min()
}

/// The lines of an event, whatever their endings.
fn lines(event: &str) -> impl Iterator<Item = &str> {
    event
        .split("\r\n")
        .flat_map(|line| line.split(['\r', '\n']))
        .filter(|line| !line.is_empty())
}

fn field(line: &str) -> (&str, &str) {
    let (name, value) = line.split_once(':').unwrap_or((line, ""));
    (name, value.strip_prefix(' ').unwrap_or(value))
}

/// The event's data: its `data:` lines joined by newlines; `None` if it has none (a comment, a
/// keep-alive) or is not UTF-8.
pub fn data(event: &[u8]) -> Option<String> {
    let event = std::str::from_utf8(event).ok()?;
    let mut data: Option<String> = None;
    for (name, value) in lines(event).map(field) {
        if name == "data" {
            match &mut data {
                Some(joined) => {
                    joined.push('\n');
                    joined.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        }
    }
    data
}

/// `event` with `data` in place of its data lines; its other fields (`event:`, `id:`, `retry:`,
/// comments) kept in order. `data` must have no line break (serialized JSON has none).
pub fn with_data(event: &[u8], data: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(data.len() + 64);
    let text = String::from_utf8_lossy(event);
    for line in lines(&text) {
        if field(line).0 != "data" {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\n");
        }
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

/// A stream body for tests that yields its parts one frame each, as an upstream's chunks arrive.
#[cfg(test)]
pub(crate) struct Parts(pub std::collections::VecDeque<bytes::Bytes>);

#[cfg(test)]
impl Parts {
    pub fn of<'a>(parts: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            parts
                .into_iter()
                .map(|part| bytes::Bytes::from(part.to_owned()))
                .collect(),
        )
    }
}

#[cfg(test)]
impl hyper::body::Body for Parts {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .pop_front()
                .map(|part| Ok(hyper::body::Frame::data(part))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_ends_at_its_blank_line_whatever_the_line_endings() {
        assert_eq!(event_end(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(event_end(b"data: a\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: a\r\rx"), Some(9));
        assert_eq!(event_end(b"data: a\n"), None);
    }

    #[test]
    fn data_lines_are_joined_and_other_fields_survive_a_rewrite() {
        let event = b"event: message\r\nid: 7\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n";
        assert_eq!(data(event).as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(data(b": keepalive\n\n"), None);
        assert_eq!(
            &with_data(event, "{\"a\":2}")[..],
            b"event: message\nid: 7\ndata: {\"a\":2}\n\n"
        );
    }
}
