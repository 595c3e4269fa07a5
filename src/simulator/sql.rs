//! The SQL subset the simulator understands: one `SELECT` statement. Grammar in the
//! [module doc of the simulator](super). Errors carry the texts ksqlDB 0.29 builds from its
//! ANTLR messages (`SyntaxErrorValidator`: `line 1:1: Syntax Error\nUnknown statement 'SLECTT'\n
//! Did you mean 'SELECT'?`), so clients see what a real server answers.

use std::fmt;

/// A parsed `SELECT`.
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    pub items: Vec<SelectItem>,
    /// The source name, uppercased unless it was backtick-quoted.
    pub from: String,
    pub filter: Option<Expr>,
    /// `EMIT CHANGES` present: a push query.
    pub emit_changes: bool,
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    Star,
    Column(String),
}

/// A boolean WHERE expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Compare(Operand, CmpOp, Operand),
    Literal(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A column or pseudo column, resolved by name later.
    Column(String),
    Integer(i64),
    Number(f64),
    String(String),
    Boolean(bool),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A statement the simulator could not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Syntax(SyntaxError),
    /// A valid statement that is not a `SELECT` (ksqlDB: "Neither a query nor a print
    /// statement"). `statement_type` is the name of ksqlDB's parse-tree class for it, which
    /// `/query` puts in its error.
    #[error("Neither a query nor a print statement")]
    NotAQuery { statement_type: &'static str },
    /// `PRINT` is a valid ksqlDB statement the simulator does not serve.
    #[error("PRINT statements are not supported by the simulator")]
    Print,
    #[error("Expected exactly one KSQL statement; found {0} instead")]
    StatementCount(usize),
}

/// A syntax error where ksqlDB's parser would stop, with the parts ksqlDB 0.29 returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based, as in the message.
    pub line: usize,
    /// 1-based, as in the message.
    pub column: usize,
    /// What follows `line L:C: ` in the text a client gets (`ParsingException`'s details).
    pub detail: String,
}

impl SyntaxError {
    /// The shorter message ksqlDB logs, which `/query` appends as the cause.
    pub fn logged(&self) -> String {
        format!("line {0}:{1}: Syntax error at line {0}:{1}", self.line, self.column)
    }

    /// The line of `sql` the error is on, which ksqlDB reports as the statement.
    pub fn failed_line<'a>(&self, sql: &'a str) -> &'a str {
        sql.split('\n').nth(self.line - 1).unwrap_or(sql)
    }
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}:{}: {}", self.line, self.column, self.detail)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// Identifier or keyword; `quoted` for backtick names.
    Ident {
        text: String,
        quoted: bool,
    },
    Int(String),
    Num(String),
    Str(String),
    Sym(&'static str),
    Eof,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident { text, quoted: true } => write!(f, "`{text}`"),
            Tok::Ident { text, .. } | Tok::Int(text) | Tok::Num(text) => f.write_str(text),
            Tok::Str(text) => write!(f, "'{text}'"),
            Tok::Sym(sym) => f.write_str(sym),
            Tok::Eof => f.write_str("<EOF>"),
        }
    }
}

struct Token {
    tok: Tok,
    line: usize,
    /// 0-based, as ANTLR's `charPositionInLine`.
    col: usize,
    /// The token as written (ANTLR's `getText`), `<EOF>` at the end.
    text: String,
}

/// The statements ksqlDB 0.29's grammar starts with, in `SyntaxErrorValidator`'s order (the
/// order decides ties when it suggests the nearest one).
const COMMANDS: &[&str] = &[
    "SELECT",
    "CREATE",
    "INSERT",
    "DESCRIBE",
    "PRINT",
    "EXPLAIN",
    "SHOW",
    "LIST",
    "TERMINATE",
    "PAUSE",
    "RESUME",
    "DROP",
    "SET",
    "DEFINE",
    "UNDEFINE",
    "UNSET",
    "ASSERT",
    "ALTER",
];

/// ANTLR's expected set where a statement must start.
fn expecting_statement() -> String {
    let quoted: Vec<String> = COMMANDS.iter().map(|command| format!("'{command}'")).collect();
    format!("{{<EOF>, {}}}", quoted.join(", "))
}

/// ksqlDB's parse-tree class for a statement other than a query, from its first words.
fn statement_type(words: &[&str]) -> Option<&'static str> {
    Some(match words {
        ["SHOW" | "LIST", "STREAMS", ..] => "ListStreams",
        ["SHOW" | "LIST", "TABLES", ..] => "ListTables",
        ["SHOW" | "LIST", "QUERIES", ..] => "ListQueries",
        ["SHOW" | "LIST", "PROPERTIES", ..] => "ListProperties",
        ["SHOW" | "LIST", "VARIABLES", ..] => "ListVariables",
        ["SHOW" | "LIST", "TOPICS", ..] => "ListTopics",
        ["SHOW" | "LIST", "FUNCTIONS", ..] => "ListFunctions",
        ["SHOW" | "LIST", "TYPES", ..] => "ListTypes",
        ["SHOW" | "LIST", "CONNECTORS", ..] => "ListConnectors",
        ["SHOW" | "LIST", ..] => "ListStreams",
        ["DESCRIBE", "FUNCTION", ..] => "DescribeFunction",
        ["DESCRIBE", "CONNECTOR", ..] => "DescribeConnector",
        ["DESCRIBE", "STREAMS", ..] => "DescribeStreams",
        ["DESCRIBE", "TABLES", ..] => "DescribeTables",
        ["DESCRIBE", ..] => "ShowColumns",
        ["CREATE", rest @ ..] => {
            let table = rest.iter().take(4).any(|word| *word == "TABLE");
            match (table, rest.windows(2).any(|pair| pair == ["AS", "SELECT"])) {
                (false, false) => "CreateStream",
                (true, false) => "CreateTable",
                (false, true) => "CreateStreamAsSelect",
                (true, true) => "CreateTableAsSelect",
            }
        }
        ["INSERT", rest @ ..] if rest.contains(&"VALUES") => "InsertValues",
        ["INSERT", ..] => "InsertInto",
        ["DROP", "TABLE", ..] => "DropTable",
        ["DROP", ..] => "DropStream",
        ["EXPLAIN", ..] => "Explain",
        ["TERMINATE", ..] => "TerminateQuery",
        ["PAUSE", ..] => "PauseQuery",
        ["RESUME", ..] => "ResumeQuery",
        ["SET", ..] => "SetProperty",
        ["UNSET", ..] => "UnsetProperty",
        ["DEFINE", ..] => "DefineVariable",
        ["UNDEFINE", ..] => "UndefineVariable",
        ["ALTER", ..] => "AlterSource",
        ["ASSERT", ..] => "AssertTopic",
        _ => return None,
    })
}

/// The text ksqlDB 0.29's `SyntaxErrorValidator` makes of a parser message: "Syntax Error",
/// then a suggestion for a mistyped statement, a hint for a missing bracket, or the expected
/// tokens when there are at most three.
fn syntax_detail(message: &str, offending: &str) -> String {
    let mut detail = String::from("Syntax Error\n");
    let Some((_, expecting)) = message.split_once("expecting ") else {
        detail.push_str(message);
        return detail;
    };
    if expecting == expecting_statement() {
        detail.push_str(&format!("Unknown statement '{offending}'\nDid you mean '{}'?", nearest_command(offending)));
    } else if message.contains("EOF") {
        detail.push_str("Syntax error at or near \";\"\n'}', ']', or ')' is missing");
    } else if expecting.split(',').count() <= 3 {
        detail.push_str(&format!("Expecting {expecting}"));
    }
    detail
}

/// The first command at the smallest edit distance from `word`.
fn nearest_command(word: &str) -> &'static str {
    let word: Vec<char> = word.to_uppercase().chars().collect();
    let mut best = (usize::MAX, COMMANDS[0]);
    for command in COMMANDS {
        let distance = edit_distance(&word, &command.chars().collect::<Vec<_>>());
        if distance < best.0 {
            best = (distance, command);
        }
    }
    best.1
}

fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Reads a token quoted with `quote` starting at `chars[*i]` (a doubled quote stands for one),
/// leaving `*i` after the closing quote.
fn quoted(chars: &[char], i: &mut usize, quote: char, line: usize, col: usize) -> Result<String, SqlError> {
    let start = *i;
    let mut text = String::new();
    *i += 1;
    loop {
        match chars.get(*i) {
            None => {
                let text: String = chars[start..].iter().collect();
                return Err(lexer_error(line, col, &text));
            }
            Some(&ch) if ch == quote && chars.get(*i + 1) == Some(&quote) => {
                text.push(quote);
                *i += 2;
            }
            Some(&ch) if ch == quote => {
                *i += 1;
                return Ok(text);
            }
            Some(&ch) => {
                text.push(ch);
                *i += 1;
            }
        }
    }
}

/// A lexer error: ANTLR's message as it is (ksqlDB adds no "Syntax Error" to these).
fn lexer_error(line: usize, col: usize, text: &str) -> SqlError {
    SqlError::Syntax(SyntaxError { line, column: col + 1, detail: format!("token recognition error at: '{text}'") })
}

fn tokenize(sql: &str) -> Result<Vec<Token>, SqlError> {
    let chars: Vec<char> = sql.chars().collect();
    let mut tokens = Vec::new();
    let (mut i, mut line, mut line_start) = (0usize, 1usize, 0usize);
    while i < chars.len() {
        let c = chars[i];
        let col = i - line_start;
        let start = i;
        let push = |tokens: &mut Vec<Token>, tok, end: usize| {
            tokens.push(Token { tok, line, col, text: chars[start..end].iter().collect() })
        };
        match c {
            '\n' => {
                i += 1;
                line += 1;
                line_start = i;
            }
            c if c.is_whitespace() => i += 1,
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '`' => {
                let text = quoted(&chars, &mut i, '`', line, col)?;
                push(&mut tokens, Tok::Ident { text, quoted: true }, i);
            }
            '\'' => {
                let text = quoted(&chars, &mut i, '\'', line, col)?;
                push(&mut tokens, Tok::Str(text), i);
            }
            c if c.is_ascii_digit() => {
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let mut is_num = false;
                if chars.get(i) == Some(&'.') {
                    is_num = true;
                    i += 1;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                let text: String = chars[start..i].iter().collect();
                push(&mut tokens, if is_num { Tok::Num(text) } else { Tok::Int(text) }, i);
            }
            c if c.is_alphabetic() || c == '_' => {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect::<String>().to_uppercase();
                push(&mut tokens, Tok::Ident { text, quoted: false }, i);
            }
            _ => {
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                let sym = match two.as_str() {
                    "<>" => Some("<>"),
                    "!=" => Some("!="),
                    "<=" => Some("<="),
                    ">=" => Some(">="),
                    _ => None,
                };
                if let Some(sym) = sym {
                    i += 2;
                    push(&mut tokens, Tok::Sym(sym), i);
                    continue;
                }
                let sym = match c {
                    '*' => "*",
                    ',' => ",",
                    '(' => "(",
                    ')' => ")",
                    '=' => "=",
                    '<' => "<",
                    '>' => ">",
                    ';' => ";",
                    '-' => "-",
                    _ => return Err(lexer_error(line, col, &c.to_string())),
                };
                i += 1;
                push(&mut tokens, Tok::Sym(sym), i);
            }
        }
    }
    let col = chars.len() - line_start;
    tokens.push(Token { tok: Tok::Eof, line, col, text: "<EOF>".into() });
    Ok(tokens)
}

/// Parses one statement ending in `;`.
pub fn parse(sql: &str) -> Result<Select, SqlError> {
    let tokens = tokenize(sql)?;
    let statements = tokens.iter().filter(|t| t.tok == Tok::Sym(";")).count();
    if statements > 1 && tokens.iter().rev().nth(1).is_some_and(|t| t.tok == Tok::Sym(";")) {
        return Err(SqlError::StatementCount(statements));
    }
    let mut parser = Parser { tokens, pos: 0 };
    parser.statement()
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Tok {
        let tok = self.peek().tok.clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        tok
    }

    fn error(&self, expecting: &str) -> SqlError {
        let token = self.peek();
        let found = match &token.tok {
            Tok::Str(text) => format!("''{text}''"),
            other => format!("'{other}'"),
        };
        let message = format!("mismatched input {found} expecting {expecting}");
        SqlError::Syntax(SyntaxError {
            line: token.line,
            column: token.col + 1,
            detail: syntax_detail(&message, &token.text),
        })
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident { text, quoted: false } if text == keyword)
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.is_keyword(keyword);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), SqlError> {
        if self.eat_keyword(keyword) {
            Ok(())
        } else {
            Err(self.error(&format!("'{keyword}'")))
        }
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        let found = matches!(self.peek().tok, Tok::Sym(s) if s == sym);
        if found {
            self.pos += 1;
        }
        found
    }

    fn statement(&mut self) -> Result<Select, SqlError> {
        if self.eat_keyword("PRINT") {
            return Err(SqlError::Print);
        }
        if !self.is_keyword("SELECT") && COMMANDS.iter().any(|k| self.is_keyword(k)) {
            let words: Vec<&str> = self.tokens[self.pos..]
                .iter()
                .filter_map(|token| match &token.tok {
                    Tok::Ident { text, quoted: false } => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            return Err(SqlError::NotAQuery { statement_type: statement_type(&words).unwrap_or("Statement") });
        }
        if !self.eat_keyword("SELECT") {
            return Err(self.error(&expecting_statement()));
        }
        let items = self.select_items()?;
        self.expect_keyword("FROM")?;
        let from = self.identifier("an identifier")?;
        let filter = if self.eat_keyword("WHERE") { Some(self.or_expr()?) } else { None };
        let emit_changes = if self.eat_keyword("EMIT") {
            self.expect_keyword("CHANGES")?;
            true
        } else {
            false
        };
        let limit = if self.eat_keyword("LIMIT") {
            match self.advance() {
                Tok::Int(text) => Some(text.parse().map_err(|_| self.error("an integer LIMIT"))?),
                _ => {
                    self.pos -= 1;
                    return Err(self.error("INTEGER_VALUE"));
                }
            }
        } else {
            None
        };
        if !self.eat_sym(";") {
            let mut expecting = vec![";"];
            if filter.is_none() && !emit_changes && limit.is_none() {
                expecting.extend(["'WHERE'", "'EMIT'", "'LIMIT'"]);
            } else if !emit_changes && limit.is_none() {
                expecting.extend(["'EMIT'", "'LIMIT'", "'AND'", "'OR'"]);
            } else if limit.is_none() {
                expecting.push("'LIMIT'");
            }
            return Err(self.error(&format!("{{{}}}", expecting.join(", ").replace(';', "';'"))));
        }
        if self.peek().tok != Tok::Eof {
            return Err(self.error("<EOF>"));
        }
        Ok(Select { items, from, filter, emit_changes, limit })
    }

    fn select_items(&mut self) -> Result<Vec<SelectItem>, SqlError> {
        let mut items = Vec::new();
        loop {
            if self.eat_sym("*") {
                items.push(SelectItem::Star);
            } else {
                items.push(SelectItem::Column(self.identifier("{'*', IDENTIFIER}")?));
            }
            if !self.eat_sym(",") {
                return Ok(items);
            }
        }
    }

    /// An identifier that is not a reserved word of this subset.
    fn identifier(&mut self, expecting: &str) -> Result<String, SqlError> {
        const RESERVED: &[&str] = &["SELECT", "FROM", "WHERE", "EMIT", "LIMIT", "AND", "OR", "NOT", "CHANGES"];
        match &self.peek().tok {
            Tok::Ident { text, quoted } if *quoted || !RESERVED.contains(&text.as_str()) => {
                let name = text.clone();
                self.pos += 1;
                Ok(name)
            }
            _ => Err(self.error(expecting)),
        }
    }

    fn or_expr(&mut self) -> Result<Expr, SqlError> {
        let mut left = self.and_expr()?;
        while self.eat_keyword("OR") {
            let right = self.and_expr()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, SqlError> {
        let mut left = self.not_expr()?;
        while self.eat_keyword("AND") {
            let right = self.not_expr()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not_expr(&mut self) -> Result<Expr, SqlError> {
        if self.eat_keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.not_expr()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, SqlError> {
        if self.eat_sym("(") {
            let inner = self.or_expr()?;
            if !self.eat_sym(")") {
                return Err(self.error("{')', 'AND', 'OR'}"));
            }
            return Ok(inner);
        }
        let left = self.operand()?;
        let op = match self.peek().tok {
            Tok::Sym("=") => CmpOp::Eq,
            Tok::Sym("<>") | Tok::Sym("!=") => CmpOp::Ne,
            Tok::Sym("<") => CmpOp::Lt,
            Tok::Sym("<=") => CmpOp::Le,
            Tok::Sym(">") => CmpOp::Gt,
            Tok::Sym(">=") => CmpOp::Ge,
            _ => {
                return match left {
                    Operand::Boolean(b) => Ok(Expr::Literal(b)),
                    _ => Err(self.error("{'=', '<>', '!=', '<', '<=', '>', '>='}")),
                }
            }
        };
        self.pos += 1;
        let right = self.operand()?;
        Ok(Expr::Compare(left, op, right))
    }

    fn operand(&mut self) -> Result<Operand, SqlError> {
        let negative = self.eat_sym("-");
        let sign = if negative { "-" } else { "" };
        let operand = match self.advance() {
            Tok::Int(text) => match format!("{sign}{text}").parse::<i64>() {
                Ok(value) => Operand::Integer(value),
                Err(_) => Operand::Number(format!("{sign}{text}").parse().unwrap_or(f64::NAN)),
            },
            Tok::Num(text) => Operand::Number(format!("{sign}{text}").parse().unwrap_or(f64::NAN)),
            Tok::Str(text) if !negative => Operand::String(text),
            Tok::Ident { text, quoted: false } if !negative && text == "TRUE" => Operand::Boolean(true),
            Tok::Ident { text, quoted: false } if !negative && text == "FALSE" => Operand::Boolean(false),
            Tok::Ident { text, quoted: false } if !negative && text == "NULL" => Operand::Null,
            Tok::Ident { text, quoted } if !negative => {
                const RESERVED: &[&str] = &["AND", "OR", "NOT", "EMIT", "LIMIT", "FROM"];
                if !quoted && RESERVED.contains(&text.as_str()) {
                    self.pos -= 1;
                    return Err(self.error("an expression"));
                }
                Operand::Column(text)
            }
            _ => {
                self.pos -= 1;
                return Err(self.error("an expression"));
            }
        };
        Ok(operand)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str) -> Operand {
        Operand::Column(name.to_string())
    }

    fn cmp(left: Operand, op: CmpOp, right: Operand) -> Expr {
        Expr::Compare(left, op, right)
    }

    #[test]
    fn parses_push_query_with_pseudo_columns_and_limit() {
        let select = parse("select rowtime, ROWPARTITION, rowOffset, * from `Orders` emit changes limit 5;").unwrap();
        assert_eq!(
            select.items,
            vec![
                SelectItem::Column("ROWTIME".into()),
                SelectItem::Column("ROWPARTITION".into()),
                SelectItem::Column("ROWOFFSET".into()),
                SelectItem::Star,
            ]
        );
        assert_eq!(select.from, "Orders");
        assert!(select.emit_changes);
        assert_eq!(select.limit, Some(5));
        assert_eq!(select.filter, None);
    }

    #[test]
    fn parses_resume_filter_with_precedence() {
        let select = parse(
            "SELECT * FROM S WHERE (ROWPARTITION = 0 AND ROWOFFSET > 41) OR \
             (ROWPARTITION = 1 AND ROWOFFSET > 7) OR ROWPARTITION > 1 EMIT CHANGES;",
        )
        .unwrap();
        let branch = |p, o| {
            Expr::And(
                Box::new(cmp(col("ROWPARTITION"), CmpOp::Eq, Operand::Integer(p))),
                Box::new(cmp(col("ROWOFFSET"), CmpOp::Gt, Operand::Integer(o))),
            )
        };
        let expected = Expr::Or(
            Box::new(Expr::Or(Box::new(branch(0, 41)), Box::new(branch(1, 7)))),
            Box::new(cmp(col("ROWPARTITION"), CmpOp::Gt, Operand::Integer(1))),
        );
        assert_eq!(select.filter, Some(expected));
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_applies() {
        let select = parse("SELECT A FROM T WHERE NOT A = 'x''y' OR B <> -3 AND C != 2.5;").unwrap();
        let expected = Expr::Or(
            Box::new(Expr::Not(Box::new(cmp(col("A"), CmpOp::Eq, Operand::String("x'y".into()))))),
            Box::new(Expr::And(
                Box::new(cmp(col("B"), CmpOp::Ne, Operand::Integer(-3))),
                Box::new(cmp(col("C"), CmpOp::Ne, Operand::Number(2.5))),
            )),
        );
        assert_eq!(select.filter, Some(expected));
        assert!(!select.emit_changes);
    }

    #[test]
    fn reports_syntax_errors_in_ksqldb_0_29_s_words() {
        // ApiIntegrationTest.shouldFailPushQueryWithInvalidSql (v0.29.0)
        assert_eq!(
            parse("SLECTT * from S EMIT CHANGES;").unwrap_err().to_string(),
            "line 1:1: Syntax Error\nUnknown statement 'SLECTT'\nDid you mean 'SELECT'?"
        );
        // the word as written, the nearest command first in ksqlDB's order on a tie
        assert_eq!(
            parse("shw;").unwrap_err().to_string(),
            "line 1:1: Syntax Error\nUnknown statement 'shw'\nDid you mean 'SHOW'?"
        );
        assert_eq!(
            parse("SELECT * FROM S EMIT CHANGES").unwrap_err().to_string(),
            "line 1:29: Syntax Error\nSyntax error at or near \";\"\n'}', ']', or ')' is missing"
        );
        assert_eq!(
            parse("SELECT * FROM S EMIT;").unwrap_err().to_string(),
            "line 1:21: Syntax Error\nExpecting 'CHANGES'"
        );
        assert_eq!(parse("SELECT * FROM S WHERE A 1;").unwrap_err().to_string(), "line 1:25: Syntax Error\n");
        let SqlError::Syntax(error) = parse("SELECT *\nFROM S WHERE A = 'open;").unwrap_err() else { panic!() };
        assert_eq!(error.to_string(), "line 2:18: token recognition error at: ''open;'");
        assert_eq!(error.logged(), "line 2:18: Syntax error at line 2:18");
        assert_eq!(error.failed_line("SELECT *\nFROM S WHERE A = 'open;"), "FROM S WHERE A = 'open;");
        assert_eq!(nearest_command("SLECT"), "SELECT");
        assert_eq!(edit_distance(&['a', 'b'], &['b']), 1);
        assert!(parse("SELECT FROM S;").unwrap_err().to_string().starts_with("line 1:8:"));
        assert!(parse("SELECT * FROM S WHERE A = ;").is_err());
        assert!(parse("SELECT * FROM S WHERE (A = 1;").is_err());
        assert!(parse("SELECT * FROM S LIMIT x;").is_err());
        assert!(parse("SELECT * FROM 'S';").is_err());
        assert!(parse("SELECT * FROM S WHERE A = 'open;").is_err());
    }

    #[test]
    fn classifies_other_statements() {
        let not_a_query = |statement_type| Err(SqlError::NotAQuery { statement_type });
        assert_eq!(parse("SHOW STREAMS;"), not_a_query("ListStreams"));
        assert_eq!(parse("list tables extended;"), not_a_query("ListTables"));
        assert_eq!(parse("DESCRIBE S EXTENDED;"), not_a_query("ShowColumns"));
        assert_eq!(parse("create stream x (a int) with (kafka_topic='t');"), not_a_query("CreateStream"));
        assert_eq!(
            parse("CREATE TABLE T AS SELECT K, COUNT(*) FROM S GROUP BY K;"),
            not_a_query("CreateTableAsSelect")
        );
        assert_eq!(parse("INSERT INTO S (A) VALUES (1);"), not_a_query("InsertValues"));
        assert_eq!(parse("PRINT 'topic';"), Err(SqlError::Print));
        assert_eq!(parse("SELECT * FROM A; SELECT * FROM B;"), Err(SqlError::StatementCount(2)));
    }
}
