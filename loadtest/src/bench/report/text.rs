//! Numbers and text as the page shows them.

/// `x` to `digits` significant digits; whole numbers with thousands separators when the
/// integer part already has that many digits.
pub(super) fn sig(x: f64, digits: i32) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let magnitude = x.abs().log10().floor() as i32;
    if magnitude >= digits - 1 {
        return thousands(x);
    }
    let decimals = (digits - 1 - magnitude) as usize;
    format!("{x:.decimals$}")
}

/// `x` rounded to a whole number, with `,` every three digits.
pub(super) fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if x < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// A duration given in ns, in the unit that suits it.
pub(super) fn duration_ns(ns: f64) -> String {
    let (v, unit) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "µs")
    } else {
        (ns, "ns")
    };
    format!("{} {unit}", sig(v, 4))
}

/// Inline code, even when the text holds backticks.
pub(super) fn code(text: &str) -> String {
    if text.is_empty() {
        "command unknown".into()
    } else if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

/// Text safe inside a table cell (and on one line).
pub(super) fn cell_text(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
