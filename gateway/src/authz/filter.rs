//! Lists that show a caller only what they may use: the results of `tools/list`, `prompts/list`,
//! `resources/list` and `resources/templates/list`, rewritten on their way back.
//!
//! Only the list itself changes: `nextCursor` and every other member pass as they are, so
//! pagination works (a page may come back shorter, or empty with a cursor to the next). An item
//! without the member that names it is dropped. Resource templates are matched as written
//! (`file:///shared/{path}` against `file:///shared/**`). The same pass records the annotations
//! of listed tools in the [`ToolCatalog`], before anything is removed. The same pass reads the
//! tasks the answer starts or lists, for the caller's [`TaskWatch`].

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::{
    grants::{Category, Grants, ToolHints},
    hints::{Hints, Listed, ToolCatalog},
};
use crate::mcp::tasks::TaskWatch;

/// One of the four lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    pub fn of_method(method: &str) -> Option<Self> {
        match method {
            "tools/list" => Some(Self::Tools),
            "prompts/list" => Some(Self::Prompts),
            "resources/list" => Some(Self::Resources),
            "resources/templates/list" => Some(Self::ResourceTemplates),
            _ => None,
        }
    }

    /// The member of the result that holds the list.
    fn member(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The member of an item that names it.
    fn item_name(self) -> &'static str {
        match self {
            Self::Tools | Self::Prompts => "name",
            Self::Resources => "uri",
            Self::ResourceTemplates => "uriTemplate",
        }
    }

    fn category(self) -> Category {
        match self {
            Self::Tools => Category::Tools,
            Self::Prompts => Category::Prompts,
            Self::Resources | Self::ResourceTemplates => Category::Resources,
        }
    }

    /// The list a result holds, told by its shape (a stream where the request is not known).
    fn of_result(result: &Value) -> Option<Self> {
        [
            Self::Tools,
            Self::Prompts,
            Self::ResourceTemplates,
            Self::Resources,
        ]
        .into_iter()
        .find(|kind| result.get(kind.member()).is_some_and(Value::is_array))
    }
}

/// How one answer's lists are rewritten.
pub struct ListFilter {
    /// The caller's grants; `None` when only learning annotations.
    grants: Option<Arc<Grants>>,
    /// Where tool annotations are recorded, when any rule reads them.
    catalog: Option<Arc<ToolCatalog>>,
    /// The list requests (id, list) the answer responds to.
    expected: Vec<(Value, ListKind)>,
    /// Whether the answer must be read (grants to apply, or rules that read annotations): then the
    /// request goes without `Accept-Encoding`. Otherwise the answer is read only to learn what
    /// it can, and a compressed one passes as it came.
    must_read: bool,
    /// The tasks this answer may start or list.
    tasks: Option<TaskWatch>,
}

impl ListFilter {
    pub fn new(
        grants: Option<Arc<Grants>>,
        catalog: Option<Arc<ToolCatalog>>,
        expected: Vec<(Value, ListKind)>,
    ) -> Self {
        Self {
            must_read: grants.is_some(),
            grants,
            catalog,
            expected,
            tasks: None,
        }
    }

    /// The filter, binding the tasks the answer starts and filtering the tasks it lists.
    pub fn watching_tasks(mut self, tasks: Option<TaskWatch>) -> Self {
        self.must_read |= tasks.is_some();
        self.tasks = tasks;
        self
    }

    /// The filter, with the answer to be read even when the caller has no grants.
    pub fn read_always(mut self, must_read: bool) -> Self {
        self.must_read |= must_read;
        self
    }

    /// Waits until the tasks the answer started are bound in the fleet's store too.
    pub async fn tasks_shared(&self) {
        if let Some(tasks) = &self.tasks {
            tasks.shared().await;
        }
    }

    /// Whether any list result is filtered, told by its shape: a stream where no request is
    /// known (neither a list nor a task request).
    fn by_shape(&self) -> bool {
        self.expected.is_empty() && self.tasks.is_none()
    }

    /// Whether the answer must come uncompressed.
    pub fn must_read(&self) -> bool {
        self.must_read
    }

    /// Whether the answer must be filtered for a caller (and not only read to learn annotations):
    /// then an answer that cannot be read must not pass.
    pub fn restricts(&self) -> bool {
        self.grants.is_some() || self.tasks.as_ref().is_some_and(TaskWatch::restricts)
    }

    /// A JSON answer (one message or a batch) rewritten: `Ok(None)` if nothing changed, an error
    /// if it is not JSON.
    pub fn rewrite_json(&self, body: &[u8]) -> Result<Option<Bytes>, serde_json::Error> {
        let mut value: Value = serde_json::from_slice(body)?;
        Ok(self
            .apply(&mut value)
            .then(|| Bytes::from(value.to_string())))
    }

    /// Rewrites a message or each message of a batch; whether anything was removed.
    pub fn apply(&self, value: &mut Value) -> bool {
        match value {
            Value::Array(messages) => messages
                .iter_mut()
                .fold(false, |changed, message| self.apply_one(message) | changed),
            message => self.apply_one(message),
        }
    }

    fn apply_one(&self, message: &mut Value) -> bool {
        if let Some(changed) = self.tasks.as_ref().and_then(|tasks| tasks.apply(message)) {
            return changed;
        }
        let Some(result) = message.get("result") else {
            return false;
        };
        let kind = if self.by_shape() {
            ListKind::of_result(result)
        } else {
            let id = message.get("id");
            self.expected
                .iter()
                .find(|(expected, _)| Some(expected) == id)
                .map(|(_, kind)| *kind)
        };
        let Some(kind) = kind else {
            return false;
        };
        let Some(items) = message
            .get_mut("result")
            .and_then(|result| result.get_mut(kind.member()))
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        if let (ListKind::Tools, Some(catalog)) = (kind, &self.catalog) {
            catalog.learn(items.iter().filter_map(|item| {
                let name = item.get("name")?.as_str()?;
                Some((name, Listed::of(item)))
            }));
        }
        let Some(grants) = &self.grants else {
            return false;
        };
        let before = items.len();
        items.retain(|item| {
            let Some(name) = item.get(kind.item_name()).and_then(Value::as_str) else {
                return false;
            };
            let hints = || ToolHints::Listed(Hints::from_annotations(item.get("annotations")));
            grants.decide(kind.category(), name, hints).allowed
        });
        let removed = items.len() != before;
        removed | mark_private(message)
    }
}

/// MCP 2026-07-28 results carry caching hints (`ttlMs`, `cacheScope`): a list filtered for one
/// caller must not be served by a shared cache to another, so it becomes `"private"`. Results
/// without hints (the handshake era) stay as they are.
fn mark_private(message: &mut Value) -> bool {
    let Some(result) = message.get_mut("result").and_then(Value::as_object_mut) else {
        return false;
    };
    let hinted = result.contains_key("cacheScope") || result.contains_key("ttlMs");
    if !hinted || result.get("cacheScope").and_then(Value::as_str) == Some("private") {
        return false;
    }
    result.insert("cacheScope".into(), Value::from("private"));
    true
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::authz::{
        grants::Rule,
        patterns::{Patterns, Separator},
    };

    fn grants(tools: &[&str], resources: &[&str]) -> Arc<Grants> {
        let list = |l: &[&str]| l.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        let rule = Rule {
            origin: "users.alice".into(),
            tools: Patterns::new(&list(tools), Separator::Free).unwrap(),
            resources: Patterns::new(&list(resources), Separator::Path).unwrap(),
            ..Rule::default()
        };
        Arc::new(Grants::new(vec![Arc::new(rule)], false))
    }

    #[test]
    fn a_tools_list_keeps_only_granted_tools_and_its_cursor() {
        let filter = ListFilter::new(
            Some(grants(&["tickets_*", "!tickets_delete"], &[])),
            None,
            vec![(json!(3), ListKind::Tools)],
        );
        let answer = json!({"jsonrpc":"2.0","id":3,"result":{"tools":[
            {"name":"tickets_search"},{"name":"tickets_delete"},{"name":"deploy"},{"title":"nameless"}
        ],"nextCursor":"page-2"}});
        let rewritten: Value = serde_json::from_slice(
            &filter
                .rewrite_json(answer.to_string().as_bytes())
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            rewritten,
            json!({"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"tickets_search"}],"nextCursor":"page-2"}})
        );
    }

    #[test]
    fn only_the_answers_to_the_list_requests_are_touched() {
        let filter = ListFilter::new(
            Some(grants(&["search"], &[])),
            None,
            vec![(json!("b"), ListKind::Tools)],
        );
        let mut batch = json!([
            {"jsonrpc":"2.0","id":"a","result":{"tools":[{"name":"deploy"}]}},
            {"jsonrpc":"2.0","id":"b","result":{"tools":[{"name":"deploy"},{"name":"search"}]}},
        ]);
        assert!(filter.apply(&mut batch));
        assert_eq!(batch[0]["result"]["tools"], json!([{"name":"deploy"}]));
        assert_eq!(batch[1]["result"]["tools"], json!([{"name":"search"}]));
    }

    #[test]
    fn resources_and_templates_are_matched_by_uri_on_a_stream_by_their_shape() {
        let filter = ListFilter::new(Some(grants(&[], &["file:///shared/**"])), None, Vec::new());
        let mut resources = json!({"id":1,"result":{"resources":[
            {"uri":"file:///shared/a.txt"},{"uri":"file:///private/b.txt"}
        ]}});
        assert!(filter.apply(&mut resources));
        assert_eq!(
            resources["result"]["resources"],
            json!([{"uri":"file:///shared/a.txt"}])
        );
        let mut templates = json!({"id":2,"result":{"resourceTemplates":[
            {"uriTemplate":"file:///shared/{path}"},{"uriTemplate":"file:///private/{path}"}
        ]}});
        assert!(filter.apply(&mut templates));
        assert_eq!(
            templates["result"]["resourceTemplates"],
            json!([{"uriTemplate":"file:///shared/{path}"}])
        );
        let mut call_result = json!({"id":3,"result":{"content":[]}});
        assert!(!filter.apply(&mut call_result));
    }

    #[test]
    fn a_modern_list_filtered_for_a_caller_is_marked_private_and_keeps_its_order() {
        let filter = ListFilter::new(
            Some(grants(&["b*", "a*"], &[])),
            None,
            vec![(json!(1), ListKind::Tools)],
        );
        let mut answer = json!({"id":1,"result":{"tools":[
            {"name":"beta"},{"name":"zeta"},{"name":"alpha"}
        ],"ttlMs":60000,"cacheScope":"public","resultType":"complete"}});
        assert!(filter.apply(&mut answer));
        assert_eq!(
            answer["result"]["tools"],
            json!([{"name":"beta"},{"name":"alpha"}])
        );
        assert_eq!(answer["result"]["cacheScope"], "private");
        assert_eq!(answer["result"]["ttlMs"], 60000);
        // Nothing removed, still filtered for this caller: private all the same.
        let mut all_granted =
            json!({"id":1,"result":{"tools":[{"name":"beta"}],"ttlMs":0,"cacheScope":"public"}});
        assert!(filter.apply(&mut all_granted));
        assert_eq!(all_granted["result"]["cacheScope"], "private");
        // A handshake-era result has no hints and gets none.
        let mut legacy = json!({"id":1,"result":{"tools":[{"name":"beta"}]}});
        assert!(!filter.apply(&mut legacy));
        assert!(legacy["result"].get("cacheScope").is_none());
    }

    #[test]
    fn listed_annotations_are_learned_before_anything_is_removed() {
        let catalog = Arc::new(ToolCatalog::default());
        let filter = ListFilter::new(
            Some(grants(&["search"], &[])),
            Some(Arc::clone(&catalog)),
            vec![(json!(1), ListKind::Tools)],
        );
        let mut answer = json!({"id":1,"result":{"tools":[
            {"name":"search","annotations":{"readOnlyHint":true}},
            {"name":"drop","annotations":{"destructiveHint":true}}
        ]}});
        assert!(filter.apply(&mut answer));
        assert_eq!(catalog.hints("search").unwrap().read_only, Some(true));
        assert_eq!(catalog.hints("drop").unwrap().destructive, Some(true));
    }
}
