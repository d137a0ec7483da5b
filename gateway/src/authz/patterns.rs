//! Allow and deny lists of glob patterns, as written in a rule: `["tickets_*", "!tickets_delete"]`.
//!
//! Patterns are globs (`*`, `?`, `[abc]`, `{a,b}`), compiled once per rule into one matcher for
//! all of a list's patterns (globset), so a name is matched against 50 patterns in one pass. For
//! tool and prompt names `*` matches any characters, `/` included (`github/*` and `*` both match
//! `github/create_issue`); for resource URIs `*` stays within one path segment and `**` crosses
//! them, as in `.gitignore` (`file:///shared/**`).

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

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

/// One list of patterns, split into what it allows and what it denies.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    allow: Vec<String>,
    allow_set: GlobSet,
    deny: Vec<String>,
    deny_set: GlobSet,
}

impl Patterns {
    /// Compiles `patterns`; the error names the position of the one at fault.
    pub fn new(patterns: &[String], separator: Separator) -> Result<Self, (usize, String)> {
        let mut allow = (Vec::new(), GlobSetBuilder::new());
        let mut deny = (Vec::new(), GlobSetBuilder::new());
        for (index, pattern) in patterns.iter().enumerate() {
            let (list, text) = match pattern.strip_prefix('!') {
                Some(denied) => (&mut deny, denied),
                None => (&mut allow, pattern.as_str()),
            };
            if text.is_empty() {
                return Err((index, "empty pattern".to_owned()));
            }
            list.1
                .add(compile(text, separator).map_err(|err| (index, err))?);
            list.0.push(pattern.clone());
        }
        let build = |builder: GlobSetBuilder| builder.build().map_err(|err| (0, err.to_string()));
        Ok(Self {
            allow: allow.0,
            allow_set: build(allow.1)?,
            deny: deny.0,
            deny_set: build(deny.1)?,
        })
    }

    /// Whether the list allows anything: a list of only `!patterns` restricts nothing else.
    pub fn allows_any(&self) -> bool {
        !self.allow.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// What the list says about `name`, naming the pattern that decides (as written).
    pub fn check(&self, name: &str) -> Match<'_> {
        if let Some(index) = first_match(&self.deny_set, name) {
            return Match::Denied(&self.deny[index]);
        }
        match first_match(&self.allow_set, name) {
            Some(index) => Match::Allowed(&self.allow[index]),
            None => Match::None,
        }
    }
}

fn compile(pattern: &str, separator: Separator) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(separator == Separator::Path)
        .backslash_escape(true)
        .build()
        .map_err(|err| err.kind().to_string())
}

fn first_match(set: &GlobSet, name: &str) -> Option<usize> {
    if set.is_empty() {
        return None;
    }
    // The lowest index is the pattern written first: explanations name that one.
    set.matches(name).into_iter().min()
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
