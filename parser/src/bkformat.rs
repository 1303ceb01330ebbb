//! Projections of the syntax tree in BuildKit's own formats, for differential testing.
//!
//! - [`dump`]: `Node.Dump()` of current BuildKit, as its testfiles/*/result hold it.
//! - [`record`]: the JSON record of ../shared/tools/buildkit-parse (BuildKit v0.12.5 through
//!   the PyPI `dockerfile` package): ENV/LABEL without separator nodes, ONBUILD reported by its
//!   trigger's arguments.

use crate::ast::{Dockerfile, Node};
use crate::golang::quote;
use crate::syntax::{Parsed, is_buildkit_instruction};
use serde_json::{Value, json};

/// The argument values BuildKit's node chain holds: none kept for instructions it does not know.
fn chain_values(node: &Node) -> Vec<&str> {
    if is_buildkit_instruction(&node.keyword) {
        node.args.iter().map(|w| w.value.as_str()).collect()
    } else {
        vec![""]
    }
}

fn dump_node(node: &Node, out: &mut String) {
    out.push_str(&node.keyword.to_lowercase());
    if !node.flags.is_empty() {
        let flags: Vec<String> = node.flags.iter().map(|f| quote(&f.value)).collect();
        out.push_str(" [");
        out.push_str(&flags.join(" "));
        out.push(']');
    }
    if let Some(sub) = &node.sub {
        out.push_str(" (");
        dump_node(sub, out);
        out.push(')');
    }
    for v in chain_values(node) {
        out.push(' ');
        out.push_str(&quote(v));
    }
}

/// BuildKit's `Node.Dump()` of the whole file, with the trailing newline its result files have.
pub fn dump(df: &Dockerfile) -> String {
    let mut out = String::new();
    for node in &df.children {
        out.push('(');
        dump_node(node, &mut out);
        out.push_str(")\n");
    }
    out
}

/// The buildkit-parse record for one parsed file.
pub fn record(file: &str, parsed: &Parsed) -> Value {
    if let Some(err) = &parsed.buildkit_error {
        return json!({"file": file, "ok": false, "error": err});
    }
    let commands: Vec<Value> = parsed
        .ast
        .children
        .iter()
        .map(|node| {
            let inner = node.sub.as_deref();
            let target = inner.unwrap_or(node);
            let mut values = chain_values(target);
            let lower = target.keyword.to_ascii_lowercase();
            if lower == "env" || lower == "label" {
                // v0.12.5 has no separator nodes: keep key and value of each triple.
                values = values
                    .chunks(3)
                    .flat_map(|c| c.iter().take(2).copied())
                    .collect();
            }
            // The record's `original` carries the heredoc bodies and terminators too.
            let mut original = node.original.clone();
            if !node.heredocs.is_empty() {
                original.push('\n');
            }
            for h in &node.heredocs {
                original.push_str(&h.content);
                original.push_str(&h.name);
                original.push('\n');
            }
            json!({
                "cmd": node.keyword,
                "sub_cmd": inner.map(|n| n.keyword.clone()),
                "json": target.json,
                "original": original,
                "start_line": node.start_line,
                "end_line": node.end_line,
                "flags": node.flags.iter().map(|f| f.value.as_str()).collect::<Vec<_>>(),
                "value": values,
                "heredocs": node.heredocs.iter().map(|h| json!({
                    "name": h.name, "fd": h.fd, "content": h.content,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"file": file, "ok": true, "commands": commands})
}
