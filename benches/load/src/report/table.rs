//! A table rendered two ways: aligned columns for the terminal, GitHub Markdown for files.

#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Columns holding numbers are right-aligned.
    numeric: Vec<bool>,
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        let header: Vec<String> = header.into_iter().map(Into::into).collect();
        let numeric = vec![true; header.len()];
        Self {
            header,
            rows: Vec::new(),
            numeric,
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        cells.resize(self.header.len(), String::new());
        for (i, c) in cells.iter().enumerate() {
            let looks_numeric = c
                .trim_start_matches(['-', '+'])
                .chars()
                .next()
                .is_none_or(|ch| ch.is_ascii_digit());
            self.numeric[i] &= looks_numeric;
        }
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn widths(&self) -> Vec<usize> {
        (0..self.header.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    pub fn terminal(&self) -> String {
        let widths = self.widths();
        let line = |cells: &[String]| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| match self.numeric[i] {
                    true => format!("{c:>w$}", w = widths[i]),
                    false => format!("{c:<w$}", w = widths[i]),
                })
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        std::iter::once(line(&self.header))
            .chain([rule.join("  ")])
            .chain(self.rows.iter().map(|r| line(r)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn markdown(&self) -> String {
        let escape = |c: &String| c.replace('|', "\\|");
        let line = |cells: &[String]| {
            format!(
                "| {} |",
                cells.iter().map(escape).collect::<Vec<_>>().join(" | ")
            )
        };
        let align: Vec<String> = self
            .numeric
            .iter()
            .map(|n| if *n { "---:".into() } else { "---".into() })
            .collect();
        std::iter::once(line(&self.header))
            .chain([format!("|{}|", align.join("|"))])
            .chain(self.rows.iter().map(|r| line(r)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(["stage", "rate/s"]);
        t.row(["gateway", "1234"]);
        t.row(["bare | HTTP", "98765"]);
        t
    }

    #[test]
    fn terminal_aligns_text_left_and_numbers_right() {
        let text = sample().terminal();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "stage        rate/s");
        assert_eq!(lines[2], "gateway        1234");
        assert_eq!(lines[3], "bare | HTTP   98765");
    }

    #[test]
    fn markdown_escapes_pipes_and_aligns_numbers() {
        let md = sample().markdown();
        let lines: Vec<_> = md.lines().collect();
        assert_eq!(lines[1], "|---|---:|");
        assert_eq!(lines[3], "| bare \\| HTTP | 98765 |");
    }
}
