//! `steady db`: one SQL statement against an app's database on its host, shown as a table.

use steady_proto::wire::{DbAnswer, DbQuery, DbValue};

use crate::api;

/// Widest column shown in the table; longer values are cut with `…` (`--json` has them whole).
const CELL_CHARS_MAX: usize = 60;

/// Runs `sql` on `name`'s database (`database`, or the app's default one) and prints the answer.
pub async fn run(
    client: &api::Client,
    name: &str,
    sql: String,
    write: bool,
    database: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let answer = client.db(name, &DbQuery { sql, write, database }).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    print_table(&answer);
    Ok(())
}

fn text(value: &DbValue) -> String {
    let full = match value {
        DbValue::Null => "NULL".to_owned(),
        DbValue::Integer(i) => i.to_string(),
        DbValue::Real(r) => r.to_string(),
        DbValue::Text(t) => t.replace('\n', "\\n"),
        DbValue::Blob { blob_hex } => format!("x'{blob_hex}'"),
    };
    if full.chars().count() > CELL_CHARS_MAX {
        full.chars().take(CELL_CHARS_MAX - 1).chain(['…']).collect()
    } else {
        full
    }
}

fn print_table(answer: &DbAnswer) {
    if answer.columns.is_empty() {
        eprintln!("{}: {} rows changed", answer.database, answer.changes);
        return;
    }
    let cells: Vec<Vec<String>> = answer.rows.iter().map(|row| row.iter().map(text).collect()).collect();
    let widths: Vec<usize> = (0..answer.columns.len())
        .map(|i| {
            let header = answer.columns[i].chars().count();
            cells.iter().map(|row| row.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0).max(header)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let padded: Vec<String> = values.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(answer.columns.iter().map(String::as_str).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().iter().map(String::as_str).collect());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    let more = if answer.truncated { " (truncated: more rows than an answer holds)" } else { "" };
    eprintln!("({} rows from {}){more}", answer.rows.len(), answer.database);
}
