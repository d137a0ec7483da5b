//! Rules and the decision they make for one caller: may this tool be called, this prompt got,
//! this resource read?
//!
//! A caller's [`Grants`] are their own rule and the rules of their groups. For one name in one
//! category (tools, prompts, resources):
//! 1. a `!pattern` of any of these rules that matches denies, and so does an annotation a rule
//!    refuses (`!destructiveHint`): deny wins;
//! 2. otherwise a pattern that matches allows, if the tool has every annotation its rule requires;
//! 3. otherwise, if any of the rules allows something in that category, the name is denied: a list
//!    of grants means "these and no others";
//! 4. otherwise no rule speaks of the category, and `[authorization] default` decides ("allow"
//!    unless set to "deny").
//!
//! The decision names the rule and pattern that made it, for the audit log and `gateway explain`.

use std::{fmt, sync::Arc};

use super::{
    hints::{Hint, Hints},
    patterns::{Match, Patterns},
};

/// What a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Tools,
    Prompts,
    Resources,
}

impl Category {
    /// The field of a rule that lists this category.
    pub fn field(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
        }
    }

    /// One thing of the category, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Tools => "tool",
            Self::Prompts => "prompt",
            Self::Resources => "resource",
        }
    }
}

/// One rule of the configuration: a user's own, or a group's.
#[derive(Debug, Clone, Default, Hash)]
pub struct Rule {
    /// Where the rule is written: `users.alice` or `groups.support`.
    pub origin: String,
    pub tools: Patterns,
    pub prompts: Patterns,
    pub resources: Patterns,
    /// `tool_annotations` without `!`: a tool this rule grants must have every one.
    pub required_hints: Vec<Hint>,
    /// `tool_annotations` with `!`: a tool with any of these is denied.
    pub refused_hints: Vec<Hint>,
}

impl Rule {
    fn patterns(&self, category: Category) -> &Patterns {
        match category {
            Category::Tools => &self.tools,
            Category::Prompts => &self.prompts,
            Category::Resources => &self.resources,
        }
    }

    /// Whether the rule grants anything in `category`. A rule that only requires annotations
    /// grants every tool that has them.
    fn grants_in(&self, category: Category) -> bool {
        self.patterns(category).allows_any()
            || (category == Category::Tools && !self.required_hints.is_empty())
    }

    fn uses_hints(&self) -> bool {
        !self.required_hints.is_empty() || !self.refused_hints.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
            && self.prompts.is_empty()
            && self.resources.is_empty()
            && !self.uses_hints()
    }
}

/// Everything that decides for one caller. A caller without any rule, under `default = "allow"`,
/// has no `Grants` at all, and pays nothing per request.
#[derive(Debug, Clone, Default, Hash)]
pub struct Grants {
    rules: Vec<Arc<Rule>>,
    default_deny: bool,
    /// Some rule reads tool annotations (known once, asked on every tool call).
    uses_hints: bool,
}

/// Where a tool's annotations come from for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolHints {
    /// As the upstream listed the tool.
    Listed(Hints),
    /// The upstream has not listed the tool (yet): every hint at its default.
    Unlisted,
}

impl ToolHints {
    fn hints(self) -> Hints {
        match self {
            Self::Listed(hints) => hints,
            Self::Unlisted => Hints::default(),
        }
    }
}

/// A decision and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'a> {
    pub allowed: bool,
    pub reason: Reason<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason<'a> {
    /// A pattern of `rule` allows the name (`pattern` is `None` for a rule of annotations only).
    Granted {
        rule: &'a str,
        category: Category,
        pattern: Option<&'a str>,
    },
    /// A `!pattern` of `rule` denies the name.
    Denied {
        rule: &'a str,
        category: Category,
        pattern: &'a str,
    },
    /// `rule` refuses tools with `hint`, which this tool has.
    HintRefused {
        rule: &'a str,
        hint: Hint,
        hints: ToolHints,
    },
    /// `rule`'s patterns match, but the tool lacks `hint`, which the rule requires.
    HintMissing {
        rule: &'a str,
        hint: Hint,
        hints: ToolHints,
    },
    /// `rule` (the first of the caller's rules that grants in the category) does not grant it.
    NotGranted { rule: &'a str, category: Category },
    /// No rule of the caller speaks of the category.
    Default { category: Category, deny: bool },
}

impl Grants {
    pub fn new(rules: Vec<Arc<Rule>>, default_deny: bool) -> Self {
        let uses_hints = rules.iter().any(|rule| rule.uses_hints());
        Self {
            rules,
            default_deny,
            uses_hints,
        }
    }

    /// Whether decisions on tools read their annotations.
    pub fn uses_hints(&self) -> bool {
        self.uses_hints
    }

    /// Where the caller's rules are written, for `gateway explain`.
    pub fn origins(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|rule| rule.origin.as_str())
    }

    /// The decision on `name`. `hints` is asked only for tools, and only if a rule reads them.
    pub fn decide(
        &self,
        category: Category,
        name: &str,
        hints: impl FnOnce() -> ToolHints,
    ) -> Verdict<'_> {
        let hints = (category == Category::Tools && self.uses_hints()).then(hints);
        let (mut granted, mut missing) = (None, None);
        for rule in &self.rules {
            match rule.judge(category, name, hints) {
                Judgement::Denies(reason) => return deny(reason),
                Judgement::Grants(reason) => {
                    granted.get_or_insert(reason);
                }
                Judgement::LacksHint(reason) => {
                    missing.get_or_insert(reason);
                }
                Judgement::Silent => {}
            }
        }
        if let Some(reason) = granted {
            return Verdict {
                allowed: true,
                reason,
            };
        }
        if let Some(reason) = missing {
            return deny(reason);
        }
        match self.rules.iter().find(|rule| rule.grants_in(category)) {
            Some(rule) => deny(Reason::NotGranted {
                rule: &rule.origin,
                category,
            }),
            None => Verdict {
                allowed: !self.default_deny,
                reason: Reason::Default {
                    category,
                    deny: self.default_deny,
                },
            },
        }
    }
}

/// What one rule says about a name.
enum Judgement<'a> {
    Denies(Reason<'a>),
    Grants(Reason<'a>),
    /// Its patterns grant the tool, but the tool lacks a hint the rule requires.
    LacksHint(Reason<'a>),
    Silent,
}

impl Rule {
    /// `hints` is `Some` for a tool when some rule of the caller reads annotations.
    fn judge(&self, category: Category, name: &str, hints: Option<ToolHints>) -> Judgement<'_> {
        let rule = self.origin.as_str();
        let pattern = match self.patterns(category).check(name) {
            Match::Denied(pattern) => {
                return Judgement::Denies(Reason::Denied {
                    rule,
                    category,
                    pattern,
                });
            }
            Match::Allowed(pattern) => Some(pattern),
            Match::None => None,
        };
        let Some(hints) = hints else {
            return match pattern {
                Some(pattern) => Judgement::Grants(Reason::Granted {
                    rule,
                    category,
                    pattern: Some(pattern),
                }),
                None => Judgement::Silent,
            };
        };
        let has = |hint: &&Hint| hints.hints().holds(**hint);
        if let Some(&hint) = self.refused_hints.iter().find(has) {
            return Judgement::Denies(Reason::HintRefused { rule, hint, hints });
        }
        // A rule of annotations only grants every tool that has them.
        if pattern.is_none() && (self.tools.allows_any() || self.required_hints.is_empty()) {
            return Judgement::Silent;
        }
        match self.required_hints.iter().find(|hint| !has(hint)) {
            Some(&hint) => Judgement::LacksHint(Reason::HintMissing { rule, hint, hints }),
            None => Judgement::Grants(Reason::Granted {
                rule,
                category,
                pattern,
            }),
        }
    }
}

fn deny(reason: Reason<'_>) -> Verdict<'_> {
    Verdict {
        allowed: false,
        reason,
    }
}

/// Why, in words: `gateway explain` prints this and the audit log records it.
impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Granted {
                rule,
                category,
                pattern: Some(pattern),
            } => write!(f, "{rule}.{} {pattern:?} grants it", category.field()),
            Self::Granted { rule, .. } => write!(
                f,
                "{rule}.tool_annotations grants every tool with the annotations it requires"
            ),
            Self::Denied {
                rule,
                category,
                pattern,
            } => write!(
                f,
                "{rule}.{} {pattern:?} denies it (a deny wins over any grant)",
                category.field()
            ),
            Self::HintRefused { rule, hint, hints } => write!(
                f,
                "{rule}.tool_annotations \"!{}\" denies it: {}",
                hint.name(),
                hint_source(hints, hint, true)
            ),
            Self::HintMissing { rule, hint, hints } => write!(
                f,
                "{rule}.tool_annotations requires {}: {}",
                hint.name(),
                hint_source(hints, hint, false)
            ),
            Self::NotGranted { rule, category } => write!(
                f,
                "not granted: {rule}.{} lists what is granted, and no pattern of the caller's rules matches",
                if category == Category::Tools {
                    "tools (or tool_annotations)"
                } else {
                    category.field()
                }
            ),
            Self::Default { category, deny } => write!(
                f,
                "no rule of the caller speaks of {}: [authorization] default = \"{}\"",
                category.field(),
                if deny { "deny" } else { "allow" }
            ),
        }
    }
}

fn hint_source(hints: ToolHints, hint: Hint, holds: bool) -> String {
    let verb = if holds { "is" } else { "is not" };
    match hints {
        ToolHints::Listed(_) => format!(
            "the upstream's annotations say the tool {verb} {}",
            hint.name()
        ),
        ToolHints::Unlisted => format!(
            "the upstream has not listed this tool yet, so it {verb} {} by the specification's defaults",
            hint.name()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::patterns::Separator;

    fn rule(origin: &str, tools: &[&str], annotations: &[&str]) -> Arc<Rule> {
        let tools: Vec<String> = tools.iter().map(|p| (*p).to_owned()).collect();
        let mut rule = Rule {
            origin: origin.to_owned(),
            tools: Patterns::new(&tools, Separator::Free).unwrap(),
            ..Rule::default()
        };
        for entry in annotations {
            match entry.strip_prefix('!') {
                Some(name) => rule.refused_hints.push(Hint::from_name(name).unwrap()),
                None => rule.required_hints.push(Hint::from_name(entry).unwrap()),
            }
        }
        Arc::new(rule)
    }

    fn tool(grants: &Grants, name: &str, hints: ToolHints) -> (bool, String) {
        let verdict = grants.decide(Category::Tools, name, || hints);
        (verdict.allowed, verdict.reason.to_string())
    }

    const READ_ONLY: ToolHints = ToolHints::Listed(Hints {
        read_only: Some(true),
        destructive: None,
        idempotent: None,
        open_world: None,
    });

    #[test]
    fn a_deny_in_one_group_wins_over_a_grant_in_another() {
        let grants = Grants::new(
            vec![
                rule("groups.support", &["tickets_*"], &[]),
                rule("groups.cautious", &["!tickets_delete"], &[]),
            ],
            false,
        );
        assert_eq!(
            tool(&grants, "tickets_search", ToolHints::Unlisted),
            (true, "groups.support.tools \"tickets_*\" grants it".into())
        );
        let (allowed, why) = tool(&grants, "tickets_delete", ToolHints::Unlisted);
        assert!(!allowed);
        assert!(
            why.starts_with("groups.cautious.tools \"!tickets_delete\" denies it"),
            "{why}"
        );
    }

    #[test]
    fn a_list_of_grants_denies_what_it_does_not_list_and_leaves_other_categories_to_the_default() {
        let grants = Grants::new(vec![rule("users.intern", &["search"], &[])], false);
        let (allowed, why) = tool(&grants, "deploy", ToolHints::Unlisted);
        assert!(!allowed);
        assert!(why.starts_with("not granted: users.intern.tools"), "{why}");
        let prompt = grants.decide(Category::Prompts, "summarize", || unreachable!());
        assert!(prompt.allowed);
        assert!(matches!(prompt.reason, Reason::Default { deny: false, .. }));
    }

    #[test]
    fn default_deny_refuses_what_no_rule_grants_and_only_denies_restrict_nothing_else() {
        let denying = Grants::new(Vec::new(), true);
        assert!(!tool(&denying, "search", ToolHints::Unlisted).0);
        let only_denies = Grants::new(vec![rule("users.bob", &["!secrets_*"], &[])], false);
        assert!(tool(&only_denies, "search", ToolHints::Unlisted).0);
        assert!(!tool(&only_denies, "secrets_read", ToolHints::Unlisted).0);
    }

    #[test]
    fn annotation_rules_grant_read_only_tools_and_deny_destructive_ones() {
        let readers = Grants::new(vec![rule("groups.readers", &[], &["readOnlyHint"])], false);
        assert!(tool(&readers, "search", READ_ONLY).0);
        let (allowed, why) = tool(&readers, "delete", ToolHints::Listed(Hints::default()));
        assert!(!allowed);
        assert!(why.contains("requires readOnlyHint"), "{why}");
        // A tool the upstream never listed is judged by the specification's defaults: denied.
        let (allowed, why) = tool(&readers, "search", ToolHints::Unlisted);
        assert!(!allowed);
        assert!(why.contains("has not listed this tool"), "{why}");

        let careful = Grants::new(
            vec![rule("groups.careful", &["*"], &["!destructiveHint"])],
            false,
        );
        assert!(tool(&careful, "search", READ_ONLY).0);
        let additive = ToolHints::Listed(Hints {
            destructive: Some(false),
            ..Hints::default()
        });
        assert!(tool(&careful, "append", additive).0);
        let (allowed, why) = tool(&careful, "drop_table", ToolHints::Listed(Hints::default()));
        assert!(!allowed);
        assert!(why.contains("\"!destructiveHint\" denies it"), "{why}");
    }

    #[test]
    fn annotations_are_not_looked_up_when_no_rule_reads_them() {
        let grants = Grants::new(vec![rule("users.alice", &["*"], &[])], false);
        let verdict = grants.decide(Category::Tools, "search", || panic!("looked up"));
        assert!(verdict.allowed);
    }
}
