//! `^` is exponentiation and binds tighter than `*`, as in PostgreSQL.
//!
//! DataFusion's default (generic) dialect reads `^` as bitwise XOR, binding looser than `+` and
//! `*`: `SELECT 2 ^ 3` answered 1 and `x ^ 2` over 2 and 3 answered 0 and 1, without an error,
//! where PostgreSQL answers 8, 4 and 9. [`as_power`] rewrites a statement parsed in that
//! dialect: each run of operators joined by `^` and the operators the dialect binds tighter than
//! it (`* / % // + - XOR & || << >>`), unparenthesised, is read again in order with `^` first and
//! left-associative, and `^` becomes PostgreSQL's exponent (planned as `power(a, b)`): `1 + 2 ^
//! 3 * 2` is `1 + ((2 ^ 3) * 2)`, 17. A unary minus binds tighter still (`-2 ^ 2` is 4), as in
//! PostgreSQL. `#` is PostgreSQL's XOR and stays one; other dialects (`SET
//! datafusion.sql_parser.dialect`) keep their own `^`.

use std::ops::ControlFlow;

use datafusion::config::{ConfigOptions, Dialect};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr};

/// `statement` with `^` as PostgreSQL's exponent, when it was parsed in the generic dialect.
pub(super) fn as_power(statement: &mut DfStatement, options: &ConfigOptions) {
    if options.sql_parser.dialect != Dialect::Generic {
        return;
    }
    super::visit_parsed(statement, &mut super::EachExpr(rewrite));
}

/// How tightly PostgreSQL binds each operator of a run, `^` first; `None` ends the run.
fn binding(op: &BinaryOperator) -> Option<u8> {
    Some(match op {
        BinaryOperator::BitwiseXor => 5,
        BinaryOperator::Multiply
        | BinaryOperator::Divide
        | BinaryOperator::Modulo
        | BinaryOperator::DuckIntegerDivide
        | BinaryOperator::MyIntegerDivide => 4,
        BinaryOperator::Plus | BinaryOperator::Minus => 3,
        BinaryOperator::Xor => 2,
        // PostgreSQL's "any other operator", below + and -; the generic dialect binds `||` as
        // tightly as `*` and the shifts as tightly as `^`, so they join a run too.
        BinaryOperator::BitwiseAnd
        | BinaryOperator::StringConcat
        | BinaryOperator::PGBitwiseShiftLeft
        | BinaryOperator::PGBitwiseShiftRight => 1,
        _ => return None,
    })
}

/// Visited children first: a `^` is the root of its run (the dialect binds it loosest), and
/// the runs below it have been read again already (their `^` is an exponent, which ends a run).
fn rewrite(e: &mut Expr) -> ControlFlow<()> {
    if matches!(
        e,
        Expr::BinaryOp {
            op: BinaryOperator::BitwiseXor,
            ..
        }
    ) {
        let mut operands = Vec::new();
        let mut operators = Vec::new();
        flatten(
            std::mem::replace(
                e,
                Expr::Value(datafusion::sql::sqlparser::ast::Value::Null.into()),
            ),
            &mut operands,
            &mut operators,
        );
        let mut operands = operands.into_iter();
        let mut operators = operators.into_iter().peekable();
        let first = operands.next().expect("a run has an operand");
        *e = climb(first, 0, &mut operands, &mut operators);
    }
    ControlFlow::Continue(())
}

/// The operands and operators of the run `e`, in the order they were written.
fn flatten(e: Expr, operands: &mut Vec<Expr>, operators: &mut Vec<BinaryOperator>) {
    match e {
        Expr::BinaryOp { left, op, right } if binding(&op).is_some() => {
            flatten(*left, operands, operators);
            operators.push(op);
            flatten(*right, operands, operators);
        }
        other => operands.push(other),
    }
}

/// Precedence climbing over a run, every operator left-associative.
fn climb(
    mut left: Expr,
    min: u8,
    operands: &mut impl Iterator<Item = Expr>,
    operators: &mut std::iter::Peekable<impl Iterator<Item = BinaryOperator>>,
) -> Expr {
    while let Some(op) = operators.next_if(|op| binding(op).is_some_and(|b| b >= min)) {
        let level = binding(&op).unwrap_or(0);
        let mut right = operands.next().expect("an operator has a right operand");
        while operators
            .peek()
            .is_some_and(|next| binding(next).is_some_and(|b| b > level))
        {
            let next = operators.peek().and_then(binding).unwrap_or(0);
            right = climb(right, next, operands, operators);
        }
        let op = match op {
            BinaryOperator::BitwiseXor => BinaryOperator::PGExp,
            op => op,
        };
        left = Expr::BinaryOp {
            left: Box::new(left),
            op,
            right: Box::new(right),
        };
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn read(sql: &str) -> String {
        let mut s = DFParser::parse_sql(sql).unwrap().pop_front().unwrap();
        as_power(&mut s, &ConfigOptions::default());
        s.to_string()
    }

    #[test]
    fn caret_binds_tightest_and_from_the_left() {
        for (sql, read_as) in [
            ("SELECT 2 ^ 3", "SELECT 2 ^ 3"),
            ("SELECT 1 + 2 ^ 3 * 2", "SELECT 1 + 2 ^ 3 * 2"),
            ("SELECT a / b ^ c / d", "SELECT a / b ^ c / d"),
            ("SELECT (1 + 2) ^ 2", "SELECT (1 + 2) ^ 2"),
            ("SELECT 2 ^ 3 ^ 2", "SELECT 2 ^ 3 ^ 2"),
            ("SELECT -2 ^ 2 = 4", "SELECT -2 ^ 2 = 4"),
            ("SELECT 'x' || 2 ^ 3", "SELECT 'x' || 2 ^ 3"),
        ] {
            assert_eq!(read(sql), read_as);
        }
    }

    /// Each `^` an exponent (the grouping is checked by answers, in `timestamps.slt`'s sibling
    /// `operators.slt`); another dialect keeps its own `^`.
    #[test]
    fn carets_are_exponents_in_the_generic_dialect_only() {
        let tree = |sql: &str| {
            let mut s = DFParser::parse_sql(sql).unwrap().pop_front().unwrap();
            as_power(&mut s, &ConfigOptions::default());
            format!("{s:?}")
        };
        let t = tree("SELECT 1 + 2 ^ 3 * 2");
        assert!(!t.contains("BitwiseXor") && t.contains("PGExp"), "{t}");
        let mut mysql = ConfigOptions::default();
        mysql.sql_parser.dialect = Dialect::MySQL;
        let mut s = DFParser::parse_sql("SELECT 2 ^ 3")
            .unwrap()
            .pop_front()
            .unwrap();
        as_power(&mut s, &mysql);
        assert!(format!("{s:?}").contains("BitwiseXor"));
    }
}
