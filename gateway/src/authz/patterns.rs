//! Allow and deny lists of glob patterns, as written in a rule: `["tickets_*", "!tickets_delete"]`.
//!
//! Patterns are globs (`*`, `?`, `[abc]`, `{a,b}`), as globset reads them. For tool and prompt
//! names `*` matches any characters, `/` included (`github/*` and `*` both match
//! `github/create_issue`); for resource URIs `*` stays within one path segment and `**` crosses
//! them, as in `.gitignore` (`file:///shared/**`).
//!
//! Most patterns in practice are a name, `prefix*`, `*suffix` or `*`: those are matched with plain
//! string comparisons, and only the others go through a compiled glob. A `tools/call` of a caller
//! with 50 patterns cost about 1,800 instructions with one globset for all (it builds a path
//! candidate, with allocations, for every match), and about 300 this way (callgrind).

use globset::{GlobBuilder, GlobMatcher};

/// What a list's patterns say about one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match<'a> {
    /// A `!pattern` matches: denied, whatever else matches.
    Denied(&'a str),
    /// A pattern matches and no `!pattern` does.
    Allowed(&'a str),
    /// No pattern matches.
    None,
}

/// How `*` treats `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Separator {
    /// Names: `*` matches anything.
    Free,
    /// URIs: `*` stops at `/`, `**` does not.
    Path,
}

/// One pattern, as written and as matched.
#[derive(Debug, Clone)]
struct Pattern {
    written: String,
    matcher: Matcher,
}

/// A pattern is what is written (its matcher follows from that).
impl std::hash::Hash for Pattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.written.hash(state);
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Any,
    Glob(GlobMatcher),
}

impl Matcher {
    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => name == &**exact,
            Self::Prefix(prefix) => name.starts_with(&**prefix),
            Self::Suffix(suffix) => name.ends_with(&**suffix),
            Self::Any => true,
            Self::Glob(glob) => glob.is_match(name),
        }
    }
}

/// One list of patterns, split into what it allows and what it denies, each in written order.
#[derive(Debug, Clone, Default, Hash)]
pub struct Patterns {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

impl Patterns {
    /// Compiles `patterns`; the error names the position of the one at fault.
    pub fn new(patterns: &[String], separator: Separator) -> Result<Self, (usize, String)> {
        let mut list = Self::default();
        for (index, pattern) in patterns.iter().enumerate() {
            let (into, text) = match pattern.strip_prefix('!') {
                Some(denied) => (&mut list.deny, denied),
                None => (&mut list.allow, pattern.as_str()),
            };
            if text.is_empty() {
                return Err((index, "empty pattern".to_owned()));
            }
            into.push(Pattern {
                written: pattern.clone(),
                matcher: compile(text, separator).map_err(|err| (index, err))?,
            });
        }
        Ok(list)
    }

    /// Whether the list allows anything: a list of only `!patterns` restricts nothing else.
    pub fn allows_any(&self) -> bool {
        !self.allow.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// What the list says about `name`, naming the first pattern (as written) that decides.
    pub fn check(&self, name: &str) -> Match<'_> {
        if let Some(pattern) = first_match(&self.deny, name) {
            return Match::Denied(pattern);
        }
        first_match(&self.allow, name).map_or(Match::None, Match::Allowed)
    }
}

fn first_match<'p>(list: &'p [Pattern], name: &str) -> Option<&'p str> {
    list.iter()
        .find(|pattern| pattern.matcher.matches(name))
        .map(|pattern| pattern.written.as_str())
}

const GLOB_SYNTAX: &[char] = &['*', '?', '[', ']', '{', '}', '\\'];

fn compile(pattern: &str, separator: Separator) -> Result<Matcher, String> {
    // Checked by globset in every case, so what is refused does not depend on the fast paths.
    let glob = GlobBuilder::new(pattern)
        .literal_separator(separator == Separator::Path)
        .backslash_escape(true)
        .build()
        .map_err(|err| err.kind().to_string())?;
    let plain = |text: &str| !text.contains(GLOB_SYNTAX);
    if plain(pattern) {
        return Ok(Matcher::Exact(pattern.into()));
    }
    if separator == Separator::Free {
        if pattern == "*" {
            return Ok(Matcher::Any);
        }
        if let Some(prefix) = pattern.strip_suffix('*').filter(|p| plain(p)) {
            return Ok(Matcher::Prefix(prefix.into()));
        }
        if let Some(suffix) = pattern.strip_prefix('*').filter(|s| plain(s)) {
            return Ok(Matcher::Suffix(suffix.into()));
        }
    }
    Ok(Matcher::Glob(glob.compile_matcher()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str], separator: Separator) -> Patterns {
        let list: Vec<String> = list.iter().map(|p| (*p).to_owned()).collect();
        Patterns::new(&list, separator).unwrap()
    }

    #[test]
    fn a_deny_pattern_wins_over_an_allow_pattern_whatever_their_order() {
        let list = patterns(&["!tickets_delete", "tickets_*"], Separator::Free);
        assert_eq!(list.check("tickets_search"), Match::Allowed("tickets_*"));
        assert_eq!(
            list.check("tickets_delete"),
            Match::Denied("!tickets_delete")
        );
        assert_eq!(list.check("deploy"), Match::None);
    }

    #[test]
    fn a_star_in_a_tool_name_crosses_slashes_but_not_in_a_resource_uri() {
        let tools = patterns(&["github/*", "run_?ests"], Separator::Free);
        assert_eq!(
            tools.check("github/issues/create"),
            Match::Allowed("github/*")
        );
        assert_eq!(tools.check("run_tests"), Match::Allowed("run_?ests"));
        let uris = patterns(&["file:///shared/*", "file:///docs/**"], Separator::Path);
        assert_eq!(
            uris.check("file:///shared/a.txt"),
            Match::Allowed("file:///shared/*")
        );
        assert_eq!(uris.check("file:///shared/private/a.txt"), Match::None);
        assert_eq!(
            uris.check("file:///docs/a/b/c.md"),
            Match::Allowed("file:///docs/**")
        );
    }

    #[test]
    fn a_list_of_only_deny_patterns_allows_nothing_by_itself() {
        let list = patterns(&["!secrets_*"], Separator::Free);
        assert!(!list.allows_any());
        assert_eq!(list.check("search"), Match::None);
    }

    #[test]
    fn the_plain_comparisons_match_exactly_what_globset_matches() {
        let names = [
            "",
            "echo",
            "echo2",
            "tickets_search",
            "x/tickets_",
            "github/a/b",
            "*",
            "a*b",
        ];
        for (pattern, separator) in [
            ("echo", Separator::Free),
            ("tickets_*", Separator::Free),
            ("*_search", Separator::Free),
            ("*", Separator::Free),
            ("github/*", Separator::Free),
            ("echo", Separator::Path),
            ("github/*", Separator::Path),
        ] {
            let fast = compile(pattern, separator).unwrap();
            let glob = GlobBuilder::new(pattern)
                .literal_separator(separator == Separator::Path)
                .backslash_escape(true)
                .build()
                .unwrap()
                .compile_matcher();
            for name in names {
                assert_eq!(
                    fast.matches(name),
                    glob.is_match(name),
                    "{pattern:?} on {name:?}"
                );
            }
        }
    }

    #[test]
    fn invalid_and_empty_patterns_are_refused_with_their_position() {
        let list = ["ok".to_owned(), "bad[".to_owned()];
        assert_eq!(Patterns::new(&list, Separator::Free).unwrap_err().0, 1);
        let list = ["!".to_owned()];
        assert_eq!(
            Patterns::new(&list, Separator::Free).unwrap_err(),
            (0, "empty pattern".to_owned())
        );
    }
}
