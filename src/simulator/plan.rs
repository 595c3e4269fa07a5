//! Binding a parsed `SELECT` to a source: which columns come out, with which types, which rows
//! pass the WHERE clause, and whether it is a push, table pull or stream pull query.

use std::cmp::Ordering;
use std::sync::Arc;

use super::source::{Row, Source, SourceKind};
use super::sql::{CmpOp, Expr, Operand, Select, SelectItem};
use crate::schema::{Column, ColumnRole, KsqlType};

/// What kind of query a statement is, which decides framing and lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    /// `EMIT CHANGES`: live until LIMIT, close or fault.
    Push,
    /// A table pull query: the current state, buffered, no final message.
    PullTable,
    /// A stream pull query: a bounded transient query over the rows present now.
    PullStream,
}

/// One output column's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    Column(usize),
    Rowtime,
    Rowpartition,
    Rowoffset,
}

/// A statement the source cannot answer; the text is ksqlDB-like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// A resolved query.
#[derive(Debug)]
pub struct Plan {
    pub source: Arc<Source>,
    pub kind: QueryKind,
    pub projection: Vec<Proj>,
    /// The projection is exactly the source columns in order (`SELECT *`): rows are copied.
    pub identity: bool,
    /// Output columns; key columns carry [`ColumnRole::Key`] only for table pull queries.
    pub columns: Vec<Column>,
    /// The source's columns when the query started: a query keeps its schema when the
    /// source later gains columns.
    pub source_columns: Arc<Vec<Column>>,
    pub filter: Option<Filter>,
    pub limit: Option<u64>,
}

/// A resolved WHERE expression.
#[derive(Debug, Clone)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Compare(Term, CmpOp, Term),
    Literal(bool),
}

#[derive(Debug, Clone)]
pub enum Term {
    Field(Proj),
    Literal(Scalar),
}

/// A comparable value.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Int(i64),
    Num(f64),
    Str(String),
    Bool(bool),
}

const PSEUDO: [(&str, Proj, KsqlType); 3] = [
    ("ROWTIME", Proj::Rowtime, KsqlType::Bigint),
    ("ROWPARTITION", Proj::Rowpartition, KsqlType::Integer),
    ("ROWOFFSET", Proj::Rowoffset, KsqlType::Bigint),
];

impl Plan {
    pub fn new(select: &Select, source: Arc<Source>) -> Result<Plan, PlanError> {
        let kind = match (select.emit_changes, source.kind) {
            (true, _) => QueryKind::Push,
            (false, SourceKind::Table) => QueryKind::PullTable,
            (false, SourceKind::Stream) => QueryKind::PullStream,
        };
        let source_columns = source.columns();
        let mut projection = Vec::new();
        let mut columns = Vec::new();
        for item in &select.items {
            match item {
                SelectItem::Star => {
                    for (index, column) in source_columns.iter().enumerate() {
                        projection.push(Proj::Column(index));
                        columns.push(output_column(column, kind));
                    }
                }
                SelectItem::Column(name) => {
                    let (proj, column) = resolve(&source_columns, name)
                        .ok_or_else(|| PlanError(format!("SELECT column '{name}' cannot be resolved.")))?;
                    projection.push(proj);
                    columns.push(output_column(&column, kind));
                }
            }
        }
        let identity = projection.len() == source_columns.len()
            && projection.iter().enumerate().all(|(i, p)| *p == Proj::Column(i));
        let filter = match &select.filter {
            Some(expr) => Some(bind(expr, &source_columns)?),
            None => None,
        };
        if kind != QueryKind::Push {
            // `SELECT *` does not name them; an explicit item or the WHERE clause does
            let named: Vec<Proj> = select
                .items
                .iter()
                .filter_map(|item| match item {
                    SelectItem::Column(name) => resolve(&source_columns, name).map(|(proj, _)| proj),
                    SelectItem::Star => None,
                })
                .collect();
            let mut filtered = Vec::new();
            if let Some(filter) = &filter {
                filter_fields(filter, &mut filtered);
            }
            for (clause, projections) in [("SELECT", named), ("WHERE", filtered)] {
                disallow_in_pull(clause, &projections)?;
            }
        }
        Ok(Plan { source, kind, projection, identity, columns, source_columns, filter, limit: select.limit })
    }

    /// Whether the query reads ROWPARTITION or ROWOFFSET anywhere (which rules out a
    /// scalable push query).
    pub fn uses_offset_columns(&self) -> bool {
        self.projection.iter().any(|p| matches!(p, Proj::Rowpartition | Proj::Rowoffset))
            || self.filters_on_offset_columns()
    }

    /// Whether the WHERE clause reads ROWPARTITION or ROWOFFSET.
    pub fn filters_on_offset_columns(&self) -> bool {
        fn in_filter(filter: &Filter) -> bool {
            match filter {
                Filter::And(a, b) | Filter::Or(a, b) => in_filter(a) || in_filter(b),
                Filter::Not(a) => in_filter(a),
                Filter::Literal(_) => false,
                Filter::Compare(left, _, right) => {
                    [left, right].iter().any(|term| matches!(term, Term::Field(Proj::Rowpartition | Proj::Rowoffset)))
                }
            }
        }
        self.filter.as_ref().is_some_and(in_filter)
    }

    /// Whether a row passes the WHERE clause.
    pub fn matches(&self, row: &Row) -> bool {
        self.filter.as_ref().is_none_or(|filter| eval(filter, row))
    }

    /// Appends the projected column values of `row`, comma-separated, without brackets.
    /// Tombstones keep key columns and null everything else, as ksqlDB's TombstoneFactory.
    pub fn write_values(&self, out: &mut Vec<u8>, row: &Row) {
        // a row produced under an older (shorter) schema is not a verbatim copy: its missing
        // columns read as null
        if self.identity && !row.tombstone && row.ends.len() == self.projection.len() {
            out.extend_from_slice(row.text.as_bytes());
            return;
        }
        for (index, proj) in self.projection.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            if row.tombstone {
                let is_key = matches!(proj, Proj::Column(i)
                    if self.source_columns.get(*i).is_some_and(|c| c.role == ColumnRole::Key));
                if !is_key {
                    out.extend_from_slice(b"null");
                    continue;
                }
            }
            match proj {
                Proj::Column(i) => out.extend_from_slice(row.column(*i).as_bytes()),
                Proj::Rowtime => out.extend_from_slice(row.rowtime.to_string().as_bytes()),
                Proj::Rowpartition => out.extend_from_slice(row.partition.to_string().as_bytes()),
                Proj::Rowoffset => out.extend_from_slice(row.offset.to_string().as_bytes()),
            }
        }
    }
}

fn output_column(column: &Column, kind: QueryKind) -> Column {
    let role = if kind == QueryKind::PullTable && column.role == ColumnRole::Key {
        ColumnRole::Key
    } else {
        ColumnRole::Value
    };
    Column { name: column.name.clone(), ty: column.ty.clone(), role }
}

fn resolve(columns: &[Column], name: &str) -> Option<(Proj, Column)> {
    if let Some(index) = columns.iter().position(|c| c.name == name) {
        return Some((Proj::Column(index), columns[index].clone()));
    }
    PSEUDO
        .iter()
        .find(|(pseudo, _, _)| *pseudo == name)
        .map(|(pseudo, proj, ty)| (*proj, Column::new(*pseudo, ty.clone())))
}

/// ksqlDB 0.29's `PullQueryValidator`: pull queries cannot read ROWPARTITION or ROWOFFSET.
fn disallow_in_pull(clause: &str, projections: &[Proj]) -> Result<(), PlanError> {
    let mut names: Vec<&str> = Vec::new();
    for proj in projections {
        let name = match proj {
            Proj::Rowpartition => "`ROWPARTITION`",
            Proj::Rowoffset => "`ROWOFFSET`",
            _ => continue,
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    Err(PlanError(format!(
        "Pull queries don't support the following columns in {clause} clauses: {}\n \
         See https://cnfl.io/queries for more info.\nAdd EMIT CHANGES if you intended to issue a push query.",
        names.join(", ")
    )))
}

/// The fields a filter reads, in the order written.
fn filter_fields(filter: &Filter, out: &mut Vec<Proj>) {
    match filter {
        Filter::And(a, b) | Filter::Or(a, b) => {
            filter_fields(a, out);
            filter_fields(b, out);
        }
        Filter::Not(a) => filter_fields(a, out),
        Filter::Literal(_) => {}
        Filter::Compare(left, _, right) => {
            for term in [left, right] {
                if let Term::Field(proj) = term {
                    out.push(*proj);
                }
            }
        }
    }
}

fn bind(expr: &Expr, source: &[Column]) -> Result<Filter, PlanError> {
    Ok(match expr {
        Expr::And(a, b) => Filter::And(Box::new(bind(a, source)?), Box::new(bind(b, source)?)),
        Expr::Or(a, b) => Filter::Or(Box::new(bind(a, source)?), Box::new(bind(b, source)?)),
        Expr::Not(a) => Filter::Not(Box::new(bind(a, source)?)),
        Expr::Literal(b) => Filter::Literal(*b),
        Expr::Compare(left, op, right) => {
            Filter::Compare(bind_operand(left, source)?, *op, bind_operand(right, source)?)
        }
    })
}

fn bind_operand(operand: &Operand, source: &[Column]) -> Result<Term, PlanError> {
    Ok(match operand {
        Operand::Column(name) => {
            let (proj, _) =
                resolve(source, name).ok_or_else(|| PlanError(format!("WHERE column '{name}' cannot be resolved.")))?;
            Term::Field(proj)
        }
        Operand::Integer(i) => Term::Literal(Scalar::Int(*i)),
        Operand::Number(n) => Term::Literal(Scalar::Num(*n)),
        Operand::String(s) => Term::Literal(Scalar::Str(s.clone())),
        Operand::Boolean(b) => Term::Literal(Scalar::Bool(*b)),
        Operand::Null => Term::Literal(Scalar::Null),
    })
}

fn eval(filter: &Filter, row: &Row) -> bool {
    match filter {
        Filter::And(a, b) => eval(a, row) && eval(b, row),
        Filter::Or(a, b) => eval(a, row) || eval(b, row),
        Filter::Not(a) => !eval(a, row),
        Filter::Literal(b) => *b,
        Filter::Compare(left, op, right) => {
            let (left, right) = (term_value(left, row), term_value(right, row));
            match compare(&left, &right) {
                Some(ordering) => match op {
                    CmpOp::Eq => ordering == Ordering::Equal,
                    CmpOp::Ne => ordering != Ordering::Equal,
                    CmpOp::Lt => ordering == Ordering::Less,
                    CmpOp::Le => ordering != Ordering::Greater,
                    CmpOp::Gt => ordering == Ordering::Greater,
                    CmpOp::Ge => ordering != Ordering::Less,
                },
                // SQL: a comparison with NULL or across types is not true
                None => false,
            }
        }
    }
}

fn term_value(term: &Term, row: &Row) -> Scalar {
    match term {
        Term::Literal(scalar) => scalar.clone(),
        Term::Field(Proj::Rowtime) => Scalar::Int(row.rowtime),
        Term::Field(Proj::Rowpartition) => Scalar::Int(i64::from(row.partition)),
        Term::Field(Proj::Rowoffset) => Scalar::Int(row.offset),
        Term::Field(Proj::Column(index)) => parse_scalar(row.column(*index)),
    }
}

/// Reads a rendered column back into a comparable value. Containers are not comparable.
fn parse_scalar(text: &str) -> Scalar {
    match text {
        "null" => Scalar::Null,
        "true" => Scalar::Bool(true),
        "false" => Scalar::Bool(false),
        _ if text.starts_with('"') => serde_json::from_str::<String>(text).map(Scalar::Str).unwrap_or(Scalar::Null),
        _ => match text.parse::<i64>() {
            Ok(i) => Scalar::Int(i),
            Err(_) => text.parse::<f64>().map(Scalar::Num).unwrap_or(Scalar::Null),
        },
    }
}

fn compare(left: &Scalar, right: &Scalar) -> Option<Ordering> {
    match (left, right) {
        (Scalar::Int(a), Scalar::Int(b)) => Some(a.cmp(b)),
        (Scalar::Int(a), Scalar::Num(b)) => (*a as f64).partial_cmp(b),
        (Scalar::Num(a), Scalar::Int(b)) => a.partial_cmp(&(*b as f64)),
        (Scalar::Num(a), Scalar::Num(b)) => a.partial_cmp(b),
        (Scalar::Str(a), Scalar::Str(b)) => Some(a.cmp(b)),
        (Scalar::Bool(a), Scalar::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::source::Pending;
    use crate::simulator::sql::parse;
    use crate::simulator::value::Value;

    fn source() -> Arc<Source> {
        let columns = vec![
            Column { name: "K".into(), ty: KsqlType::String, role: ColumnRole::Key },
            Column::new("N", KsqlType::Integer),
            Column::new("D", KsqlType::Double),
        ];
        let source = Source::new("S".into(), SourceKind::Stream, columns, 3, None);
        let rows = (0..9).map(|i| {
            let values = [Value::string(format!("k{i}")), Value::Integer(i), Value::Double(f64::from(i) / 2.0)];
            let (text, ends) = source.render(&values).unwrap();
            Pending { partition: Some((i % 3) as u32), rowtime: 1000 + i64::from(i), text, ends, tombstone: false }
        });
        source.append(rows.collect::<Vec<_>>()).unwrap();
        Arc::new(source)
    }

    fn run(sql: &str) -> Vec<String> {
        let source = source();
        let plan = Plan::new(&parse(sql).unwrap(), Arc::clone(&source)).unwrap();
        source
            .read(0, 100)
            .rows
            .iter()
            .filter(|row| plan.matches(row))
            .map(|row| {
                let mut out = Vec::new();
                plan.write_values(&mut out, row);
                String::from_utf8(out).unwrap()
            })
            .collect()
    }

    #[test]
    fn pseudo_columns_project_before_star() {
        let source = source();
        let plan =
            Plan::new(&parse("SELECT ROWTIME, ROWPARTITION, ROWOFFSET, * FROM S EMIT CHANGES;").unwrap(), source)
                .unwrap();
        assert_eq!(
            crate::schema::format_schema(&plan.columns),
            "`ROWTIME` BIGINT, `ROWPARTITION` INTEGER, `ROWOFFSET` BIGINT, `K` STRING, `N` INTEGER, `D` DOUBLE"
        );
        assert!(!plan.identity);
        assert_eq!(run("SELECT ROWPARTITION, ROWOFFSET, N FROM S EMIT CHANGES;")[4], "1,1,4");
    }

    #[test]
    fn offset_pseudo_columns_are_found_in_select_and_where() {
        let uses = |sql: &str| Plan::new(&parse(sql).unwrap(), source()).unwrap().uses_offset_columns();
        assert!(!uses("SELECT ROWTIME, * FROM S WHERE N > 1 EMIT CHANGES;"));
        assert!(uses("SELECT ROWOFFSET FROM S EMIT CHANGES;"));
        assert!(uses("SELECT N FROM S WHERE N = 1 OR NOT ROWPARTITION = 0 EMIT CHANGES;"));
    }

    #[test]
    fn resume_filter_keeps_rows_after_offsets() {
        // partition p holds N = p, p+3, p+6 at offsets 0, 1, 2
        let rows = run("SELECT N FROM S WHERE (ROWPARTITION = 0 AND ROWOFFSET > 1) OR \
             (ROWPARTITION = 1 AND ROWOFFSET > 0) OR ROWPARTITION > 1 EMIT CHANGES;");
        assert_eq!(rows, vec!["2", "4", "5", "6", "7", "8"]);
    }

    #[test]
    fn column_comparisons_use_types() {
        assert_eq!(run("SELECT N FROM S WHERE K = 'k3' EMIT CHANGES;"), vec!["3"]);
        assert_eq!(run("SELECT N FROM S WHERE D >= 3.5 AND NOT N = 8 EMIT CHANGES;"), vec!["7"]);
        assert_eq!(run("SELECT N FROM S WHERE N <> 'x' EMIT CHANGES;"), Vec::<String>::new());
        assert_eq!(run("SELECT N FROM S WHERE ROWTIME < 1002 EMIT CHANGES;"), vec!["0", "1"]);
    }

    #[test]
    fn resolution_errors_read_like_ksqldb() {
        let err = Plan::new(&parse("SELECT NOPE FROM S EMIT CHANGES;").unwrap(), source()).unwrap_err();
        assert_eq!(err.0, "SELECT column 'NOPE' cannot be resolved.");
        let err = Plan::new(&parse("SELECT ROWOFFSET FROM S;").unwrap(), source()).unwrap_err();
        assert_eq!(
            err.0,
            "Pull queries don't support the following columns in SELECT clauses: `ROWOFFSET`\n \
             See https://cnfl.io/queries for more info.\nAdd EMIT CHANGES if you intended to issue a push query."
        );
        let select = parse("SELECT K FROM S WHERE ROWOFFSET > 1 AND ROWPARTITION = 0 OR ROWOFFSET < 9;").unwrap();
        let err = Plan::new(&select, source()).unwrap_err();
        assert!(err.0.starts_with(
            "Pull queries don't support the following columns in WHERE clauses: `ROWOFFSET`, `ROWPARTITION`\n"
        ));
        let err = Plan::new(&parse("SELECT * FROM S WHERE X = 1;").unwrap(), source()).unwrap_err();
        assert_eq!(err.0, "WHERE column 'X' cannot be resolved.");
    }
}
