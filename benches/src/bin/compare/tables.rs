//! The markdown tables `compare` prints after each table of medians: `Table`, any
//! columns; `Ratios`, one ratio per row (what it divides, its value, and in some
//! sections the goal it is held to); and the number formats of their cells.

/// A markdown table, printed after a blank line: the header, the `|---|` line, the
/// rows. An empty cell prints as `| |`.
pub struct Table {
    columns: usize,
    lines: Vec<String>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        let mut t = Table {
            columns: header.len(),
            lines: Vec::new(),
        };
        t.line(header);
        t.lines.push(format!("|{}", "---|".repeat(header.len())));
        t
    }

    /// A row, one cell per column.
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) {
        assert_eq!(cells.len(), self.columns, "a row of {} cells", self.columns);
        self.line(cells);
    }

    fn line<S: AsRef<str>>(&mut self, cells: &[S]) {
        let mut line = String::from("|");
        for c in cells {
            match c.as_ref() {
                "" => line.push_str(" |"),
                c => line.push_str(&format!(" {c} |")),
            }
        }
        self.lines.push(line);
    }

    pub fn print(&self) {
        println!();
        for l in &self.lines {
            println!("{l}");
        }
    }
}

/// A table of ratios: each row names the ratio (which targets it divides, by what
/// measure), its value (formatted with `times`, `two` or `three`) and, in a table with a
/// third column, the goal it is held to (`""` for none).
pub struct Ratios {
    goals: bool,
    table: Table,
}

impl Ratios {
    /// Two columns: the ratio and its value, under these headings.
    pub fn new(ratio: &str, value: &str) -> Ratios {
        Ratios {
            goals: false,
            table: Table::new(&[ratio, value]),
        }
    }

    /// Three columns, the third the goal (`| ratio | measured | target |`).
    pub fn with_goals() -> Ratios {
        Ratios {
            goals: true,
            table: Table::new(&["ratio", "measured", "target"]),
        }
    }

    /// One ratio; `goal` is `""` when there is none (and must be in a table without
    /// goals).
    pub fn row(&mut self, label: &str, value: String, goal: &str) {
        if self.goals {
            self.table.row(&[label, &value, goal]);
        } else {
            assert!(goal.is_empty(), "{label}: a goal in a table without goals");
            self.table.row(&[label, &value]);
        }
    }

    pub fn print(&self) {
        self.table.print();
    }
}

/// `1.23x`: how many times the other.
pub fn times(v: f64) -> String {
    format!("{v:.2}x")
}

/// `0.81`: a fraction of the other, two decimals.
pub fn two(v: f64) -> String {
    format!("{v:.2}")
}

/// `0.987`: three decimals, for the A/B of two builds of the filters.
pub fn three(v: f64) -> String {
    format!("{v:.3}")
}
