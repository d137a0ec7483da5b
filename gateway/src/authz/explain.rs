//! `gateway explain`: what the rules of a configuration decide for one user and one tool, prompt
//! or resource, and which rule decides, without running the gateway. It asks the same
//! [`Grants::decide`] that requests do.

use serde_json::{Value, json};

use super::{Category, Grants, ToolHints, hints::Hints};
use crate::config::PolicySettings;

/// The decision for one question, as `gateway explain` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub user: String,
    pub category: Category,
    pub name: String,
    pub allowed: bool,
    pub reason: String,
    /// Where the user's rules are written.
    pub rules: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("no user is named {0:?} in this configuration")]
pub struct UnknownUser(String);

/// Decides for `user` and `name` under `policy`. `annotations` stand for what the upstream says of
/// the tool (its `annotations` object); without them the tool is taken as not listed yet, which is
/// what the running gateway assumes too until it has seen the tool in a `tools/list` answer.
pub fn explain(
    policy: &PolicySettings,
    user: &str,
    category: Category,
    name: &str,
    annotations: Option<&Value>,
) -> Result<Explanation, UnknownUser> {
    let found = policy
        .users
        .iter()
        .find(|candidate| candidate.name == user)
        .ok_or_else(|| UnknownUser(user.to_owned()))?;
    Ok(decide(
        found.grants.as_deref(),
        user,
        category,
        name,
        annotations,
    ))
}

/// Decides for a caller with `grants` (`None`: no rule applies): a configured user's, or those
/// an access token's groups and scopes give (`oauth::explain`).
pub fn decide(
    grants: Option<&Grants>,
    user: &str,
    category: Category,
    name: &str,
    annotations: Option<&Value>,
) -> Explanation {
    let hints = || match annotations {
        Some(annotations) => ToolHints::Listed(Hints::from_annotations(Some(annotations))),
        None => ToolHints::Unlisted,
    };
    let (allowed, reason, rules) = match grants {
        Some(grants) => {
            let verdict = grants.decide(category, name, hints);
            let rules = grants.origins().map(str::to_owned).collect();
            (verdict.allowed, verdict.reason.to_string(), rules)
        }
        None => (
            true,
            "no rule applies to this user: [authorization] default = \"allow\"".to_owned(),
            Vec::new(),
        ),
    };
    Explanation {
        user: user.to_owned(),
        category,
        name: name.to_owned(),
        allowed,
        reason,
        rules,
    }
}

impl Explanation {
    pub fn to_json(&self) -> Value {
        json!({
            "user": self.user,
            "kind": self.category.noun(),
            "name": self.name,
            "allowed": self.allowed,
            "reason": self.reason,
            "rules": self.rules,
        })
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.allowed { "ALLOWED" } else { "DENIED" };
        writeln!(
            f,
            "{verdict}: {} {:?} for user {:?}",
            self.category.noun(),
            self.name,
            self.user
        )?;
        writeln!(f, "  because: {}", self.reason)?;
        if self.rules.is_empty() {
            writeln!(f, "  rules of {}: none", self.user)
        } else {
            writeln!(f, "  rules of {}: {}", self.user, self.rules.join(", "))
        }
    }
}
