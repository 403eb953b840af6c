//! Output for people (aligned tables) and for pipelines (JSON).

use anyhow::Result;
use serde::Serialize;

/// `items` to stdout as pretty JSON with `json`, else as a table of `row(item)` under
/// `header`: the output of every command that lists things.
pub fn print_list<T: Serialize>(
    json: bool,
    items: &[T],
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(items)?);
    } else {
        let rows: Vec<Vec<String>> = items.iter().map(row).collect();
        print!("{}", table(header, &rows));
    }
    Ok(())
}

/// A plain-text table with a header row, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Bytes as MiB with one decimal, e.g. `63.4 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let rows = vec![
            vec!["opencode".to_string(), "x".to_string()],
            vec!["a".into(), "yy".into()],
        ];
        assert_eq!(
            table(&["NAME", "V"], &rows),
            "NAME      V\nopencode  x\na         yy\n"
        );
    }
}
