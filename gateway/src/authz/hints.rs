//! Tool annotations (`readOnlyHint`, `destructiveHint`, `idempotentHint`, `openWorldHint`), as the
//! upstream describes its tools in `tools/list` answers, and the catalog of what it said.
//!
//! Annotations are the server's word about its own tools: the gateway trusts its upstream, and
//! rules on them are only as good as the server's descriptions. A hint the server left out takes
//! the MCP specification's default (read-only: no; destructive: yes; idempotent: no; open world:
//! yes), and a tool the gateway has not seen listed yet has every hint at its default: rules on
//! annotations fail closed.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use serde_json::Value;

/// One annotation a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hint {
    ReadOnly,
    Destructive,
    Idempotent,
    OpenWorld,
}

impl Hint {
    pub const ALL: [Self; 4] = [
        Self::ReadOnly,
        Self::Destructive,
        Self::Idempotent,
        Self::OpenWorld,
    ];

    /// The annotation's name in MCP.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReadOnly => "readOnlyHint",
            Self::Destructive => "destructiveHint",
            Self::Idempotent => "idempotentHint",
            Self::OpenWorld => "openWorldHint",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|hint| hint.name() == name)
    }
}

/// What the server said about one tool; `None` where it said nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    pub read_only: Option<bool>,
    pub destructive: Option<bool>,
    pub idempotent: Option<bool>,
    pub open_world: Option<bool>,
}

impl Hints {
    /// The `annotations` of a tool in a `tools/list` answer.
    pub fn from_annotations(annotations: Option<&Value>) -> Self {
        let flag = |name: &str| {
            annotations
                .and_then(|a| a.get(name))
                .and_then(Value::as_bool)
        };
        Self {
            read_only: flag("readOnlyHint"),
            destructive: flag("destructiveHint"),
            idempotent: flag("idempotentHint"),
            open_world: flag("openWorldHint"),
        }
    }

    /// Whether `hint` holds for the tool, with the specification's defaults. Destructive and
    /// idempotent mean something only for a tool that is not read-only.
    pub fn holds(&self, hint: Hint) -> bool {
        let read_only = self.read_only.unwrap_or(false);
        match hint {
            Hint::ReadOnly => read_only,
            Hint::Destructive => !read_only && self.destructive.unwrap_or(true),
            Hint::Idempotent => read_only || self.idempotent.unwrap_or(false),
            Hint::OpenWorld => self.open_world.unwrap_or(true),
        }
    }
}

/// Tools whose annotations the gateway keeps at most: names come from the upstream, and memory
/// stays bounded whatever it lists.
const MAX_TOOLS: usize = 10_000;
/// Mirrored arguments kept per tool.
const MAX_MIRRORED: usize = 32;

/// The annotations (and mirrored arguments) of every tool the upstream has listed, learned from `tools/list` answers as they
/// pass (any caller's, before filtering). Lives outside the policy: a reload keeps it.
#[derive(Default)]
pub struct ToolCatalog {
    tools: RwLock<HashMap<Box<str>, Listed>>,
}

/// What the gateway keeps of one listed tool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listed {
    pub hints: Hints,
    /// The arguments its schema mirrors into `Mcp-Param-*` headers (`x-mcp-header`), if any.
    pub mirrored: Option<Arc<[Mirrored]>>,
}

/// One argument a tool's schema marks with `x-mcp-header`: clients send its value in a header too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrored {
    /// `mcp-param-<name>`, lowercase.
    pub header: Box<str>,
    pub argument: Box<str>,
}

impl Listed {
    /// A tool as a `tools/list` answer describes it.
    pub fn of(tool: &serde_json::Value) -> Self {
        let mirrored: Vec<Mirrored> = tool
            .pointer("/inputSchema/properties")
            .and_then(serde_json::Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(argument, schema)| {
                let header = schema.get("x-mcp-header")?.as_str()?;
                Some(Mirrored {
                    header: format!("mcp-param-{}", header.to_ascii_lowercase()).into(),
                    argument: argument.as_str().into(),
                })
            })
            .take(MAX_MIRRORED)
            .collect();
        Self {
            hints: Hints::from_annotations(tool.get("annotations")),
            mirrored: (!mirrored.is_empty()).then(|| mirrored.into()),
        }
    }
}

impl ToolCatalog {
    /// What the upstream last said about `tool`; `None` if it never listed it.
    pub fn hints(&self, tool: &str) -> Option<Hints> {
        self.read(tool, |listed| listed.hints)
    }

    /// The arguments of `tool` mirrored into headers, as last listed.
    pub fn mirrored(&self, tool: &str) -> Option<Arc<[Mirrored]>> {
        self.read(tool, |listed| listed.mirrored.clone()).flatten()
    }

    fn read<T>(&self, tool: &str, with: impl FnOnce(&Listed) -> T) -> Option<T> {
        self.tools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tool)
            .map(with)
    }

    /// Records the tools of one `tools/list` answer.
    pub fn learn<'a>(&self, listed: impl IntoIterator<Item = (&'a str, Listed)>) {
        let mut tools = self.tools.write().unwrap_or_else(PoisonError::into_inner);
        for (name, hints) in listed {
            if let Some(known) = tools.get_mut(name) {
                *known = hints;
            } else if tools.len() < MAX_TOOLS {
                tools.insert(name.into(), hints);
            } else {
                tracing::warn!(
                    max = MAX_TOOLS,
                    "the upstream lists more tools than the gateway keeps annotations of; rules on annotations deny the others"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn hints_the_server_left_out_take_the_specifications_defaults() {
        let unknown = Hints::default();
        assert!(!unknown.holds(Hint::ReadOnly));
        assert!(unknown.holds(Hint::Destructive));
        assert!(!unknown.holds(Hint::Idempotent));
        assert!(unknown.holds(Hint::OpenWorld));

        let read_only = Hints::from_annotations(Some(
            &json!({"readOnlyHint": true, "destructiveHint": true}),
        ));
        assert!(read_only.holds(Hint::ReadOnly));
        assert!(
            !read_only.holds(Hint::Destructive),
            "a read-only tool destroys nothing"
        );
        let additive = Hints::from_annotations(Some(
            &json!({"destructiveHint": false, "openWorldHint": false}),
        ));
        assert!(!additive.holds(Hint::Destructive));
        assert!(!additive.holds(Hint::OpenWorld));
    }

    #[test]
    fn the_catalog_keeps_the_latest_word_on_each_tool() {
        let catalog = ToolCatalog::default();
        assert_eq!(catalog.hints("search"), None);
        let read_only = Hints {
            read_only: Some(true),
            ..Hints::default()
        };
        let listed = |hints| Listed {
            hints,
            mirrored: None,
        };
        catalog.learn([("search", listed(read_only))]);
        assert_eq!(catalog.hints("search"), Some(read_only));
        catalog.learn([("search", listed(Hints::default()))]);
        assert_eq!(catalog.hints("search"), Some(Hints::default()));
    }
}
