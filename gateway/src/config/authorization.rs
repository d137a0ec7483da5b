//! `[authorization]`, `[groups.*]` and the rules of `[[users]]`, compiled into each user's
//! [`Grants`]: patterns are checked and compiled here, once, so a bad one is reported with its
//! field and a request never compiles anything.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::{
    ConfigError,
    file::{Config, DefaultDecision},
    invalid,
    settings::User,
    users::check_user_name,
};
use crate::authz::{Grants, Hint, Patterns, Rule, Separator};

/// The lists of one rule, as written.
struct RuleLists<'a> {
    tools: &'a [String],
    prompts: &'a [String],
    resources: &'a [String],
    tool_annotations: &'a [String],
}

/// Gives every user the grants their own rule and their groups make; returns each group's rule,
/// for callers whose groups a token names (`[oauth]`).
pub(super) fn assign_grants(
    config: &Config,
    users: &mut [User],
) -> Result<HashMap<String, Arc<Rule>>, ConfigError> {
    let mut group_rules = HashMap::new();
    let mut rules: HashMap<&str, Vec<Arc<Rule>>> = HashMap::new();
    for (index, user) in config.users.iter().enumerate() {
        let lists = RuleLists {
            tools: &user.tools,
            prompts: &user.prompts,
            resources: &user.resources,
            tool_annotations: &user.tool_annotations,
        };
        let rule = compile(
            format!("users.{}", user.name),
            &format!("users[{index}]"),
            &lists,
        )?;
        if !rule.is_empty() {
            rules
                .entry(user.name.as_str())
                .or_default()
                .push(Arc::new(rule));
        }
    }
    let known: HashSet<&str> = users.iter().map(|user| user.name.as_str()).collect();
    for (name, group) in &config.groups {
        let field = format!("groups.{name}");
        check_user_name(name).map_err(|message| invalid(&field, message))?;
        let lists = RuleLists {
            tools: &group.tools,
            prompts: &group.prompts,
            resources: &group.resources,
            tool_annotations: &group.tool_annotations,
        };
        let rule = Arc::new(compile(field.clone(), &field, &lists)?);
        group_rules.insert(name.clone(), Arc::clone(&rule));
        for (index, member) in group.members.iter().enumerate() {
            if !known.contains(member.as_str()) {
                return Err(invalid(
                    format!("{field}.members[{index}]"),
                    format!("no user is named {member:?}"),
                ));
            }
            let theirs = rules.entry(member.as_str()).or_default();
            if theirs.iter().any(|rule| rule.origin == field) {
                return Err(invalid(
                    format!("{field}.members[{index}]"),
                    format!("{member:?} is listed twice"),
                ));
            }
            theirs.push(Arc::clone(&rule));
        }
    }
    let default_deny = config.authorization.default == DefaultDecision::Deny;
    let denied_without_rules = default_deny.then(|| Arc::new(Grants::new(Vec::new(), true)));
    for user in users.iter_mut() {
        user.grants = match rules.remove(user.name.as_str()) {
            Some(rules) => Some(Arc::new(Grants::new(rules, default_deny))),
            None => denied_without_rules.clone(),
        };
    }
    Ok(group_rules)
}

fn compile(origin: String, field: &str, lists: &RuleLists<'_>) -> Result<Rule, ConfigError> {
    let patterns = |name: &str, list: &[String], separator| {
        Patterns::new(list, separator).map_err(|(index, message)| {
            invalid(
                format!("{field}.{name}[{index}]"),
                format!("not a valid pattern: {message}"),
            )
        })
    };
    let mut rule = Rule {
        origin,
        tools: patterns("tools", lists.tools, Separator::Free)?,
        prompts: patterns("prompts", lists.prompts, Separator::Free)?,
        resources: patterns("resources", lists.resources, Separator::Path)?,
        ..Rule::default()
    };
    for (index, entry) in lists.tool_annotations.iter().enumerate() {
        let (refused, name) = match entry.strip_prefix('!') {
            Some(name) => (true, name),
            None => (false, entry.as_str()),
        };
        let hint = Hint::from_name(name).ok_or_else(|| {
            invalid(
                format!("{field}.tool_annotations[{index}]"),
                format!(
                    "unknown annotation {name:?}: one of {}, each optionally preceded by '!'",
                    Hint::ALL.map(Hint::name).join(", ")
                ),
            )
        })?;
        if refused {
            rule.refused_hints.push(hint);
        } else {
            rule.required_hints.push(hint);
        }
    }
    Ok(rule)
}
