//! `gateway explain` for a caller who comes with an access token: the groups and scopes a token
//! would claim stand in for the token, and the answer is the one a request with it would get,
//! grants and required scopes both.

use serde_json::Value;

use super::token::grants_of;
use crate::{
    authz::{self, Category, Explanation},
    config::OAuthSettings,
};

/// What a token of `user` claiming `groups` and `scopes` may do with `name`.
pub fn explain(
    settings: &OAuthSettings,
    user: &str,
    groups: &[String],
    scopes: &[String],
    category: Category,
    name: &str,
    annotations: Option<&Value>,
) -> Explanation {
    let (in_groups, grants) = grants_of(settings, groups, scopes);
    let mut explanation = authz::decide(grants.as_deref(), user, category, name, annotations);
    explanation.rules.insert(
        0,
        format!(
            "a token's groups and scopes put it in: {}",
            if in_groups.is_empty() {
                "no group".to_owned()
            } else {
                in_groups.join(", ")
            }
        ),
    );
    let tools = if category == Category::Tools {
        vec![name]
    } else {
        Vec::new()
    };
    let needed = settings.scopes_for(tools);
    let missing: Vec<&str> = needed
        .iter()
        .filter(|scope| !scopes.contains(scope))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        explanation.allowed = false;
        explanation.reason = format!(
            "the token lacks scope {} (403 insufficient_scope, before any grant is asked)",
            missing.join(" ")
        );
    }
    explanation
}
