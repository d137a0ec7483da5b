//! `Origin` validation, which the MCP transport makes a MUST for servers: a web page the user
//! visits could otherwise reach a gateway on the user's network through DNS rebinding, with the
//! browser's connection. Browsers send `Origin` on such requests; MCP clients outside a browser
//! send none, and are unaffected.

use hyper::{HeaderMap, header::ORIGIN};

/// The browser origins whose requests are served.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AllowedOrigins {
    /// Any request with an `Origin` header is refused (the default: no browser page served).
    #[default]
    None,
    /// `"*"`: every origin.
    Any,
    /// These, as `scheme://host[:port]`, lowercased.
    Only(Vec<String>),
}

/// The request's `Origin` is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("requests from this Origin are not allowed (allowed_origins)")]
pub struct OriginRefused;

impl AllowedOrigins {
    /// From the configured list; `None` is the index of an entry that is no origin.
    pub fn from_list(entries: &[String]) -> Result<Self, usize> {
        if entries.is_empty() {
            return Ok(Self::None);
        }
        if entries.iter().any(|entry| entry == "*") {
            return Ok(Self::Any);
        }
        let mut origins = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            origins.push(normalized_origin(entry).ok_or(index)?);
        }
        Ok(Self::Only(origins))
    }

    /// Whether a request with `headers` may go on: it has no `Origin`, or an allowed one.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), OriginRefused> {
        let mut values = headers.get_all(ORIGIN).iter();
        let Some(origin) = values.next() else {
            return Ok(());
        };
        let allowed = values.next().is_none()
            && match self {
                Self::None => false,
                Self::Any => true,
                Self::Only(origins) => origins
                    .iter()
                    .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes())),
            };
        if allowed { Ok(()) } else { Err(OriginRefused) }
    }
}

/// `scheme://host[:port]` (http or https, nothing after the authority), lowercased.
fn normalized_origin(entry: &str) -> Option<String> {
    let entry = entry.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, authority) = entry.split_once("://")?;
    let valid = matches!(scheme, "http" | "https")
        && !authority.is_empty()
        && authority.parse::<hyper::http::uri::Authority>().is_ok()
        && !authority.contains(['/', '?', '#', '@']);
    valid.then_some(entry)
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn with_origin(origins: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for origin in origins {
            headers.append(ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    fn list(entries: &[&str]) -> Result<AllowedOrigins, usize> {
        AllowedOrigins::from_list(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn a_request_without_origin_is_always_served() {
        for allowed in [
            AllowedOrigins::None,
            AllowedOrigins::Any,
            list(&["https://a.example"]).unwrap(),
        ] {
            assert_eq!(allowed.check(&HeaderMap::new()), Ok(()));
        }
    }

    #[test]
    fn only_listed_origins_pass_compared_without_case() {
        let allowed = list(&["https://App.Example.com/", "http://localhost:3000"]).unwrap();
        assert_eq!(
            allowed.check(&with_origin(&["https://app.example.com"])),
            Ok(())
        );
        assert_eq!(
            allowed.check(&with_origin(&["HTTPS://APP.EXAMPLE.COM"])),
            Ok(())
        );
        assert_eq!(
            allowed.check(&with_origin(&["http://localhost:3000"])),
            Ok(())
        );
        for refused in [
            "http://app.example.com",
            "https://evil.example",
            "null",
            "http://localhost:3001",
        ] {
            assert_eq!(
                allowed.check(&with_origin(&[refused])),
                Err(OriginRefused),
                "{refused}"
            );
        }
        assert_eq!(
            allowed.check(&with_origin(&[
                "https://app.example.com",
                "https://evil.example"
            ])),
            Err(OriginRefused),
            "two Origin headers"
        );
        assert_eq!(
            AllowedOrigins::None.check(&with_origin(&["https://a.example"])),
            Err(OriginRefused)
        );
        assert_eq!(
            list(&["*"])
                .unwrap()
                .check(&with_origin(&["https://a.example"])),
            Ok(())
        );
    }

    #[test]
    fn an_entry_that_is_no_origin_is_named_by_its_index() {
        assert_eq!(list(&["https://ok.example", "ftp://x"]), Err(1));
        assert_eq!(list(&["https://x.example/path"]), Err(0));
        assert_eq!(list(&["app.example.com"]), Err(0));
        assert_eq!(list(&["https://"]), Err(0));
    }
}
