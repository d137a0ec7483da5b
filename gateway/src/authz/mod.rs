//! Per-tool authorization: which tools, prompts and resources each caller may use.
//!
//! Rules are compiled from the configuration into each user's [`Grants`] (see `grants.rs` for the
//! order in which they decide), and travel with the policy, so a reload changes them for the next
//! request. They act twice on a request: [`check`] refuses a call of something not granted before
//! it is audited and forwarded, and a [`ListFilter`] rewrites the answers to the list methods so
//! that a caller never learns what it may not use, whether the upstream answers with JSON or with
//! an SSE stream ([`FilteredEvents`]).
//!
//! A caller without any rule (and `default = "allow"`) has no grants and skips both.

mod explain;
mod filter;
mod grants;
mod hints;
mod patterns;
mod stream;

pub use explain::{Explanation, UnknownUser, decide, explain};
pub use filter::{ListFilter, ListKind};
pub use grants::{Category, Grants, Reason, Rule, ToolHints, Verdict};
pub use hints::{Hint, Hints, Listed, Mirrored, ToolCatalog};
pub use patterns::{Match, Patterns, Separator};
pub use stream::FilteredEvents;

use crate::mcp::jsonrpc::{Kind, Message};

/// What a message acts on, for authorization: its category and name.
pub fn subject(message: &Message) -> Option<(Category, &str)> {
    let category = match message.kind {
        Kind::ToolCall => Category::Tools,
        Kind::PromptGet | Kind::PromptCompletion => Category::Prompts,
        Kind::ResourceRead | Kind::ResourceSubscription | Kind::ResourceCompletion => {
            Category::Resources
        }
        _ => return None,
    };
    Some((category, message.target.as_deref().unwrap_or("")))
}

/// One message refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedMessage {
    /// Its position in the batch.
    pub index: usize,
    pub category: Category,
    pub name: String,
    /// Why, naming the rule (for the audit log, not the client).
    pub reason: String,
}

/// Messages of a request the caller may not send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(&self.refused))]
pub struct NotGranted {
    pub refused: Vec<RefusedMessage>,
}

fn describe(refused: &[RefusedMessage]) -> String {
    let names: Vec<String> = refused
        .iter()
        .map(|message| format!("{} {:?}", message.category.noun(), message.name))
        .collect();
    format!("not granted to this caller: {}", names.join(", "))
}

/// What one message acts on: its subject, or each resource a `subscriptions/listen` subscribes
/// to (which needs the same grant as reading it).
fn subjects(message: &Message) -> impl Iterator<Item = (Category, &str)> {
    let listened = (message.kind == Kind::Listen)
        .then(|| message.subscriptions.iter())
        .into_iter()
        .flatten()
        .map(|uri| (Category::Resources, uri.as_str()));
    subject(message).into_iter().chain(listened)
}

/// Refuses the request if any of its messages calls, gets, reads or subscribes to something the
/// caller is not granted: a batch goes whole or not at all.
pub fn check(
    grants: &Grants,
    messages: &[Message],
    catalog: &ToolCatalog,
) -> Result<(), NotGranted> {
    let mut refused = Vec::new();
    for (index, (category, name)) in messages
        .iter()
        .enumerate()
        .flat_map(|(index, message)| subjects(message).map(move |subject| (index, subject)))
    {
        let hints = || {
            catalog
                .hints(name)
                .map_or(ToolHints::Unlisted, ToolHints::Listed)
        };
        let verdict = grants.decide(category, name, hints);
        if !verdict.allowed {
            refused.push(RefusedMessage {
                index,
                category,
                name: name.to_owned(),
                reason: verdict.reason.to_string(),
            });
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(NotGranted { refused })
    }
}
