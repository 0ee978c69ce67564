//! A budgeted YAML loader for untrusted text: model card front matter, as JSON.
//!
//! `yaml_rust2::YamlLoader` expands every alias by cloning the node it names, so 405 bytes of "billion laughs"
//! (ten anchors, each a list of nine aliases of the previous one) ask for 9¹⁰ nodes and exhaust memory; its
//! `Parser::load` also recurses once per nesting level, so a few kilobytes of `- - - - …` overflow the stack.
//! [`load`] drives yaml-rust2's event parser itself, without recursion, and builds `serde_json::Value`s under a
//! [`Budget`]: the input length, the nesting depth, and the number of nodes and scalar bytes the document expands
//! to. An alias is charged the size of the node it repeats before that node is copied, and an anchor the size of
//! the copy it keeps, so the memory a document can take is bounded by the budget whatever its aliases do.
//!
//! Apart from the budget the result is what `YamlLoader` followed by a plain YAML-to-JSON conversion gives: the
//! first document, scalars typed as YAML 1.2 core (`!!str`/`!!int`/`!!float`/`!!bool`/`!!null` tags honoured),
//! duplicate keys rejected, an alias of an anchor still being defined read as null, keys that are not scalars
//! dropped (JSON has no complex keys). The module depends only on `yaml_rust2` and `serde_json`, so any reader of
//! untrusted YAML can call it.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::Yaml;
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{ScanError, TScalarStyle};

/// Front matter longer than this is refused before parsing: real cards have a few KiB of YAML, and the scanner's
/// work grows with the input.
pub const MAX_INPUT_BYTES: usize = 64 << 10;
/// Deeper nesting is refused: real cards nest three or four levels, and a shallow tree keeps dropping a `Value`
/// (which recurses) safe on any thread's stack.
pub const MAX_DEPTH: usize = 64;
/// Nodes a document may expand to, aliases included. 64 KiB of YAML without aliases holds at most about 64 Ki
/// nodes (`{a,b,…}` is two nodes per two bytes), so only alias expansion can reach this.
pub const MAX_NODES: u64 = 1 << 17;
/// Scalar bytes a document may expand to, aliases included: sixteen times the input limit.
pub const MAX_SCALAR_BYTES: u64 = 1 << 20;

/// What a document may cost. [`Budget::default`] holds the limits above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub input_bytes: usize,
    pub depth: usize,
    pub nodes: u64,
    pub scalar_bytes: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { input_bytes: MAX_INPUT_BYTES, depth: MAX_DEPTH, nodes: MAX_NODES, scalar_bytes: MAX_SCALAR_BYTES }
    }
}

/// Why a YAML text was refused.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("yaml is {len} bytes, over the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("yaml nests deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("yaml expands to more than {limit} nodes (aliases repeat too much)")]
    TooManyNodes { limit: u64 },
    #[error("yaml expands to more than {limit} bytes of scalars (aliases repeat too much)")]
    TooManyScalarBytes { limit: u64 },
    #[error("duplicate key {key:?} in a mapping")]
    DuplicateKey { key: String },
    #[error("invalid yaml: {0}")]
    Syntax(#[from] ScanError),
}

/// Parses the first document of `text` as JSON under `budget`; `Ok(None)` when the text holds no document.
///
/// # Errors
/// [`YamlError::Syntax`] for invalid YAML (in any document, as `YamlLoader` does), the other variants when the
/// text or what it expands to is over `budget`.
pub fn load(text: &str, budget: Budget) -> Result<Option<Value>, YamlError> {
    if text.len() > budget.input_bytes {
        return Err(YamlError::TooLong { len: text.len(), limit: budget.input_bytes });
    }
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder { budget, ..Builder::default() };
    let mut first = None;
    loop {
        let (event, _) = parser.next_token()?;
        match event {
            Event::StreamEnd => return Ok(first),
            // Later documents are parsed (an error in one fails the text, as with `YamlLoader`) but not built.
            Event::DocumentStart => builder.building = first.is_none(),
            Event::DocumentEnd => {
                if let Some(root) = builder.root.take() {
                    first.get_or_insert(root.value);
                }
                builder.anchors.clear();
            }
            event => builder.event(event)?,
        }
    }
}

/// A finished node: its JSON, its YAML scalar when it is one (for use as a key), and what it cost.
#[derive(Debug, Clone)]
struct Node {
    value: Value,
    scalar: Option<Yaml>,
    nodes: u64,
    scalar_bytes: u64,
}

/// A collection being filled.
#[derive(Debug)]
struct Open {
    anchor: usize,
    kind: OpenKind,
    nodes: u64,
    scalar_bytes: u64,
}

#[derive(Debug)]
enum OpenKind {
    Seq(Vec<Value>),
    Map { map: Map<String, Value>, key: Option<Node>, keys: Vec<Yaml> },
}

#[derive(Debug, Default)]
struct Builder {
    budget: Budget,
    building: bool,
    stack: Vec<Open>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    /// What the document has cost so far, copies for anchors and aliases included.
    nodes: u64,
    scalar_bytes: u64,
    /// Nesting of the document being skipped (later documents are parsed, not built).
    skipped_depth: usize,
}

impl Builder {
    fn charge(&mut self, nodes: u64, scalar_bytes: u64) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(nodes);
        self.scalar_bytes = self.scalar_bytes.saturating_add(scalar_bytes);
        if self.nodes > self.budget.nodes {
            return Err(YamlError::TooManyNodes { limit: self.budget.nodes });
        }
        if self.scalar_bytes > self.budget.scalar_bytes {
            return Err(YamlError::TooManyScalarBytes { limit: self.budget.scalar_bytes });
        }
        Ok(())
    }

    fn open(&mut self, anchor: usize, kind: OpenKind) -> Result<(), YamlError> {
        if !self.building {
            self.skipped_depth += 1;
            return self.check_depth(self.skipped_depth);
        }
        self.check_depth(self.stack.len() + 1)?;
        self.charge(1, 0)?;
        self.stack.push(Open { anchor, kind, nodes: 1, scalar_bytes: 0 });
        Ok(())
    }

    fn check_depth(&self, depth: usize) -> Result<(), YamlError> {
        if depth > self.budget.depth { Err(YamlError::TooDeep { limit: self.budget.depth }) } else { Ok(()) }
    }

    fn event(&mut self, event: Event) -> Result<(), YamlError> {
        match event {
            Event::SequenceStart(anchor, _) => self.open(anchor, OpenKind::Seq(Vec::new())),
            Event::MappingStart(anchor, _) => {
                self.open(anchor, OpenKind::Map { map: Map::new(), key: None, keys: Vec::new() })
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if !self.building {
                    self.skipped_depth = self.skipped_depth.saturating_sub(1);
                    return Ok(());
                }
                let Some(open) = self.stack.pop() else { return Ok(()) };
                let value = match open.kind {
                    OpenKind::Seq(items) => Value::Array(items),
                    OpenKind::Map { map, .. } => Value::Object(map),
                };
                let node = Node { value, scalar: None, nodes: open.nodes, scalar_bytes: open.scalar_bytes };
                self.finish(node, open.anchor)
            }
            Event::Scalar(text, style, anchor, tag) if self.building => {
                let len = text.len() as u64;
                self.charge(1, len)?;
                let scalar = resolve(text, style, tag.as_ref());
                let node = Node { value: to_json(&scalar), scalar: Some(scalar), nodes: 1, scalar_bytes: len };
                self.finish(node, anchor)
            }
            Event::Alias(id) if self.building => {
                // The copy is charged before it is made: this is what stops an alias bomb.
                let node = match self.anchors.get(&id) {
                    Some(anchored) => {
                        let (nodes, bytes) = (anchored.nodes, anchored.scalar_bytes);
                        self.charge(nodes, bytes)?;
                        self.anchors.get(&id).cloned()
                    }
                    None => None,
                };
                // An alias of an anchor whose node is still open (`&a [*a]`) is null, as `YamlLoader` reads it.
                let node = match node {
                    Some(node) => node,
                    None => {
                        self.charge(1, 0)?;
                        Node { value: Value::Null, scalar: Some(Yaml::BadValue), nodes: 1, scalar_bytes: 0 }
                    }
                };
                self.finish(node, 0)
            }
            _ => Ok(()),
        }
    }

    /// Records an anchored node and hands the node to its parent (or makes it the root).
    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), YamlError> {
        // Valid anchor ids start at 1. The kept copy is charged like an alias, so nested anchors cannot multiply
        // memory unseen.
        if anchor > 0 {
            self.charge(node.nodes, node.scalar_bytes)?;
            self.anchors.insert(anchor, node.clone());
        }
        let Some(parent) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        parent.nodes = parent.nodes.saturating_add(node.nodes);
        parent.scalar_bytes = parent.scalar_bytes.saturating_add(node.scalar_bytes);
        match &mut parent.kind {
            OpenKind::Seq(items) => items.push(node.value),
            OpenKind::Map { key: slot @ None, .. } => *slot = Some(node),
            OpenKind::Map { map, key, keys } => {
                let Some(key) = key.take() else { return Ok(()) };
                if let Some(scalar) = key.scalar {
                    if keys.contains(&scalar) {
                        return Err(YamlError::DuplicateKey { key: key_text(&scalar).unwrap_or_default() });
                    }
                    if let Some(text) = key_text(&scalar) {
                        map.insert(text, node.value);
                    }
                    keys.push(scalar);
                }
                // Complex keys have no JSON form; the Hub's YAML parser would reject the card anyway.
            }
        }
        Ok(())
    }
}

/// A scalar as `YamlLoader` types it: quoted scalars are strings, core-schema tags are honoured, plain scalars
/// are resolved by `Yaml::from_str`.
fn resolve(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Yaml {
    if style != TScalarStyle::Plain {
        return Yaml::String(text);
    }
    let Some(tag) = tag else { return Yaml::from_str(&text) };
    if tag.handle != "tag:yaml.org,2002:" {
        return Yaml::String(text);
    }
    match tag.suffix.as_str() {
        "bool" => match text.as_str() {
            "true" | "True" | "TRUE" => Yaml::Boolean(true),
            "false" | "False" | "FALSE" => Yaml::Boolean(false),
            _ => Yaml::BadValue,
        },
        "int" => text.parse::<i64>().map_or(Yaml::BadValue, Yaml::Integer),
        "float" if parse_f64(&text).is_some() => Yaml::Real(text),
        "float" => Yaml::BadValue,
        "null" => match text.as_str() {
            "~" | "null" => Yaml::Null,
            _ => Yaml::BadValue,
        },
        _ => Yaml::String(text),
    }
}

/// yaml-rust2's float syntax (its own helper is private).
fn parse_f64(v: &str) -> Option<f64> {
    match v {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Some(f64::NAN),
        _ if v.bytes().any(|b| b.is_ascii_digit()) => v.parse::<f64>().ok(),
        _ => None,
    }
}

/// A scalar's JSON; floats JSON cannot hold (infinities, NaN) stay strings.
fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => {
            s.parse::<f64>().ok().and_then(Number::from_f64).map_or(Value::String(s.clone()), Value::Number)
        }
        Yaml::Integer(i) => Value::Number((*i).into()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(_) | Yaml::Hash(_) | Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}

/// A scalar key as a JSON object key.
fn key_text(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        Yaml::Null => Some("null".to_owned()),
        Yaml::Array(_) | Yaml::Hash(_) | Yaml::Alias(_) | Yaml::BadValue => None,
    }
}
