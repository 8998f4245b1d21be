//! How the list commands print, in one place: `--format table` (the default), `json` (one
//! object per line, Docker's field names), a Go-style template (`'{{.Name}}'`,
//! `'table {{.ID}}\t{{.Name}}'`, `'{{json .}}'`), and `-q` (IDs only).

use anyhow::bail;
use clap::Args;
use serde_json::Value;

/// The flags every list command takes.
#[derive(Args, Clone, Debug)]
pub struct ListFlags {
    /// table, json (one object per line), or a template such as '{{.Name}}'
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Only print IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

/// What a list command has to print: each item as Docker's JSON object, its ID (for
/// `-q`) and its table row.
pub struct Listing {
    pub header: &'static [&'static str],
    pub items: Vec<Item>,
}

pub struct Item {
    pub json: Value,
    pub id: String,
    pub row: Vec<String>,
}

impl Item {
    /// An item whose table row is its JSON object's `keys`, in order.
    pub fn of(json: Value, id: impl Into<String>, keys: &[&str]) -> Item {
        let row = keys.iter().map(|k| text(&json[*k])).collect();
        Item {
            json,
            id: id.into(),
            row,
        }
    }
}

/// A JSON value as a template or a table prints it: strings bare, the rest as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

pub fn print(f: &ListFlags, l: Listing) -> anyhow::Result<()> {
    if f.quiet {
        l.items.iter().for_each(|i| println!("{}", i.id));
        return Ok(());
    }
    match f.format.as_str() {
        "table" => {
            let rows: Vec<Vec<String>> = l.items.into_iter().map(|i| i.row).collect();
            super::util::table(l.header, &rows);
        }
        "json" | "{{json .}}" => l.items.iter().for_each(|i| println!("{}", i.json)),
        t if t.contains("{{") => {
            let (table, t) = match t.strip_prefix("table") {
                Some(rest) => (true, rest.trim_start()),
                None => (false, t),
            };
            let t = Template::parse(&t.replace("\\t", "\t").replace("\\n", "\n"))?;
            if table {
                let header: Vec<String> = t.header().split('\t').map(String::from).collect();
                let rows: Vec<Vec<String>> = l
                    .items
                    .iter()
                    .map(|i| t.render_cells(&i.json))
                    .collect();
                let header: Vec<&str> = header.iter().map(String::as_str).collect();
                super::util::table(&header, &rows);
            } else {
                l.items.iter().for_each(|i| println!("{}", t.render(&i.json)));
            }
        }
        other => bail!(
            "--format {other:?} is not supported: use table, json or a template such as '{{{{.ID}}}}'"
        ),
    }
    Ok(())
}

/// A Go-style template, the part of Go's syntax that list formats use: text,
/// `{{.Field}}` (also `{{.A.B}}`), `{{json .}}` and `{{json .Field}}`.
struct Template(Vec<Part>);

enum Part {
    Text(String),
    /// A field's path (empty: the whole object), and whether to print it as JSON.
    Field(Vec<String>, bool),
}

impl Template {
    fn parse(t: &str) -> anyhow::Result<Template> {
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find("}}") else {
                bail!("--format {t:?}: a {{{{ has no }}}}");
            };
            let action = rest[open + 2..open + close].trim();
            let (json, path) = match action.strip_prefix("json ") {
                Some(p) => (true, p.trim()),
                None => (false, action),
            };
            let Some(path) = path.strip_prefix('.') else {
                bail!("--format {t:?}: {{{{{action}}}}} is not supported: use {{{{.Field}}}} or {{{{json .Field}}}}");
            };
            let path: Vec<String> = path
                .split('.')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if path
                .iter()
                .any(|p| !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                bail!("--format {t:?}: {{{{{action}}}}} is not supported: use {{{{.Field}}}} or {{{{json .Field}}}}");
            }
            parts.push(Part::Field(path, json));
            rest = &rest[open + close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template(parts))
    }

    fn render(&self, v: &Value) -> String {
        self.render_with(v, |s| s)
    }

    /// A table template's row: its cells split at the template's tabs (a tab in a value
    /// is a space, so that no value shifts the columns).
    fn render_cells(&self, v: &Value) -> Vec<String> {
        self.render_with(v, |s| s.replace('\t', " "))
            .split('\t')
            .map(String::from)
            .collect()
    }

    fn render_with(&self, v: &Value, value: impl Fn(String) -> String) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(s) => out.push_str(s),
                Part::Field(path, json) => {
                    let x = path.iter().fold(v, |x, k| &x[k.as_str()]);
                    out.push_str(&value(match (json, x) {
                        (true, x) => x.to_string(),
                        (false, Value::Null) => "<no value>".into(),
                        (false, x) => text(x),
                    }));
                }
            }
        }
        out
    }

    /// The header of a `table` template: each field's name in capitals, a word to each
    /// capital (`CurrentState`: `CURRENT STATE`), as Docker's headers.
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Part::Text(s) => s.clone(),
                Part::Field(path, _) => words_of(path.last().map_or("", |s| s)),
            })
            .collect()
    }
}

/// `CurrentState` as `CURRENT STATE` (`ID` stays `ID`).
fn words_of(name: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() && prev_lower {
            out.push(' ');
        }
        prev_lower = c.is_ascii_lowercase();
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_print_fields_and_json() {
        let v = json!({"ID": "abc", "Name": "web", "Spec": {"Replicas": 3}, "Self": true});
        let t = |s: &str| Template::parse(s).unwrap().render(&v);
        assert_eq!(t("{{.Name}}"), "web");
        assert_eq!(t("{{ .ID }}: {{.Spec.Replicas}} {{.Self}}"), "abc: 3 true");
        assert_eq!(t("{{json .Spec}}"), "{\"Replicas\":3}");
        assert_eq!(t("{{.Nope}}"), "<no value>");
        assert_eq!(
            Template::parse("{{.ID}}\t{{.CurrentState}}")
                .unwrap()
                .header(),
            "ID\tCURRENT STATE"
        );
        let tabbed = json!({"A": "x\ty", "B": "z"});
        assert_eq!(
            Template::parse("{{.A}}\t{{.B}}")
                .unwrap()
                .render_cells(&tabbed),
            ["x y", "z"]
        );
        for bad in ["{{range .}}", "{{.Name", "{{.A-B}}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn items_take_their_rows_from_their_json() {
        let i = Item::of(
            json!({"ID": "x", "N": 2, "E": null}),
            "full-x",
            &["ID", "N", "E"],
        );
        assert_eq!(i.row, ["x", "2", ""]);
        assert_eq!(i.id, "full-x");
    }
}
