//! Number formatting and table layout shared by the commands' human-readable output.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};

/// A table with effp's look: condensed rows, numbers right-aligned.
pub fn new_table(header: &[&str], numeric: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for &c in numeric {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// 3151904 → "3,151,904".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// FLOPs in the most readable unit: "8.74 G", "52.4 M", "900".
pub fn si(n: u64) -> String {
    let v = n as f64;
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1} K", v / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} M", v / 1e6),
        _ => format!("{:.2} G", v / 1e9),
    }
}

/// A shape as "1×3×640×640".
pub fn shape(s: &[usize]) -> String {
    s.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("×")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_for_people() {
        assert_eq!(thousands(3_151_904), "3,151,904");
        assert_eq!(thousands(999), "999");
        assert_eq!(si(8_740_000_000), "8.74 G");
        assert_eq!(si(52_400_000), "52.4 M");
        assert_eq!(shape(&[1, 3, 640, 640]), "1×3×640×640");
    }
}
