//! Output helpers shared by the commands.

use shoal_proto::RemoveRequest;

/// Sizes as Docker prints them (decimal units, four significant digits): `2.15MB`.
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    let int_digits = if v < 1.0 {
        1
    } else {
        (v.log10().floor() as usize) + 1
    };
    let s = format!("{v:.prec$}", prec = 4usize.saturating_sub(int_digits));
    let digits = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{digits}{}", units[i])
}

/// Prints rows as a left-aligned table with three spaces between columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(header, rows));
}

/// The table [`table`] prints. Cells are padded by hand, so a cell of any length (a
/// node's 100,000-character hostname) is printed, never a panic on a format width.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut w: Vec<usize> = Vec::new();
    for r in std::iter::once(&head).chain(rows) {
        for (i, c) in r.iter().enumerate() {
            let n = c.chars().count();
            match w.get_mut(i) {
                Some(x) => *x = (*x).max(n),
                None => w.push(n),
            }
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                let pad = w[i] - c.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `rm` of several objects, as Docker does it: each removed one's name on standard
/// output, each refusal on standard error, and failure if any was refused.
pub async fn remove_each<F, Fut>(names: Vec<String>, mut remove: F) -> std::process::ExitCode
where
    F: FnMut(RemoveRequest) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut failed = false;
    for n in names {
        let req = RemoveRequest {
            id_or_name: n.clone(),
            force: false,
        };
        match remove(req).await {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("Error: {}", e.message());
                failed = true;
            }
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(2_150_400), "2.15MB");
        assert_eq!(human_size(1_000_000), "1MB");
        assert_eq!(human_size(123_456_789), "123.5MB");
    }

    #[test]
    fn tables_pad_any_cell_and_any_row() {
        let rows = vec![
            vec!["a".to_string(), "b".into()],
            vec!["ccc".to_string(), "d".into(), "extra".into()],
        ];
        assert_eq!(
            render_table(&["ID", "NAME"], &rows),
            "ID    NAME\na     b\nccc   d      extra\n"
        );
        // wider than a format width can be (65535): printed whole, no panic
        let long = "h".repeat(100_000);
        let out = render_table(
            &["HOSTNAME", "STATUS"],
            &[vec![long.clone(), "Ready".into()]],
        );
        assert!(
            out.contains(&format!("{long}   Ready")),
            "the long cell is printed whole"
        );
    }
}
