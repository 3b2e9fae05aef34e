//! Named parameters: `:spike_factor` in a saved query's SQL becomes the value of the
//! run (an override) or the file's default, as a SQL literal.
//!
//! The SQL is tokenized (DataFusion's own SQL tokenizer), so `:name` inside a string
//! literal, a quoted identifier or a comment is left alone, and `::` casts are not
//! parameters. A value that reads as a number becomes a number literal, `true` /
//! `false` a boolean, anything else a string literal with its quotes doubled: a value
//! is never SQL text.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// `sql` with every `:name` replaced by the literal of `values[name]`.
pub fn bind(sql: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| format!("cannot read the SQL: {e}"))?;
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < tokens.len() {
        let name = match (&tokens[i], tokens.get(i + 1)) {
            (Token::Placeholder(p), _) if p.starts_with(':') => Some((p[1..].to_string(), 1)),
            (Token::Colon, Some(Token::Word(w))) if w.quote_style.is_none() => {
                Some((w.value.clone(), 2))
            }
            _ => None,
        };
        match name {
            Some((name, used)) => {
                let value = values.get(&name).ok_or_else(|| {
                    let known: Vec<&str> = values.keys().map(String::as_str).collect();
                    format!(
                        "the SQL uses :{name}, which is not a parameter of this query (declare it with `-- param: {name} = <default>`; declared: {})",
                        if known.is_empty() { "none".into() } else { known.join(", ") }
                    )
                })?;
                out.push_str(&literal(value));
                i += used;
            }
            None => {
                out.push_str(&tokens[i].to_string());
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The SQL literal of a parameter value.
pub fn literal(value: &str) -> String {
    let v = value.trim();
    if v.parse::<f64>().is_ok_and(f64::is_finite) {
        return v.to_string();
    }
    match v {
        "true" | "false" => v.to_string(),
        _ => string_literal(value),
    }
}

/// `value` as a SQL string literal, whatever it reads as (quotes doubled).
pub fn string_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The parameter values of a run: the file's defaults, overridden by `overrides`
/// (each of which must be a declared parameter).
pub fn resolve(
    defaults: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut values = defaults.clone();
    for (name, value) in overrides {
        if !defaults.contains_key(name) {
            let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
            return Err(format!(
                "`{name}` is not a parameter of this query (its parameters: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        }
        values.insert(name.clone(), value.clone());
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_become_literals_and_nothing_else_changes() {
        let sql = "SELECT count(*) * :factor AS n, ':factor' AS s, \"x:factor\", \
                   CAST(1 AS BIGINT)::DOUBLE -- :factor\nFROM t WHERE source = :src AND f > :limit";
        let bound = bind(
            sql,
            &values(&[("factor", "2.5"), ("src", "it's"), ("limit", "10")]),
        )
        .unwrap();
        assert_eq!(
            bound,
            "SELECT count(*) * 2.5 AS n, ':factor' AS s, \"x:factor\", \
             CAST(1 AS BIGINT)::DOUBLE -- :factor\nFROM t WHERE source = 'it''s' AND f > 10"
        );
    }

    #[test]
    fn values_are_never_sql() {
        assert_eq!(literal("1; DROP TABLE x"), "'1; DROP TABLE x'");
        assert_eq!(literal("' OR 1=1 --"), "''' OR 1=1 --'");
        assert_eq!(literal("NaN"), "'NaN'");
        assert_eq!(literal("inf"), "'inf'");
        assert_eq!(literal("-3"), "-3");
        assert_eq!(literal("1e3"), "1e3");
        assert_eq!(literal("true"), "true");
    }

    #[test]
    fn unknown_parameters_are_errors() {
        let err = bind("SELECT :nope", &values(&[("k", "5")])).unwrap_err();
        assert!(
            err.contains(":nope") && err.contains("declared: k"),
            "{err}"
        );
        let err = resolve(&values(&[("k", "5")]), &values(&[("kk", "1")])).unwrap_err();
        assert!(
            err.contains("`kk`") && err.contains("parameters: k"),
            "{err}"
        );
        assert_eq!(
            resolve(&values(&[("k", "5")]), &values(&[("k", "7")])).unwrap(),
            values(&[("k", "7")])
        );
    }
}
