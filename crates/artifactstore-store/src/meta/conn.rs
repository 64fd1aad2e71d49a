//! Runs [`SqlConn`] statements on sqlx connections of any database that
//! knows how to bind an [`Arg`] and read a [`Cell`] (a [`Flavor`]).

use std::borrow::Cow;
use std::marker::PhantomData;
use std::ops::DerefMut;
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::query::Query;
use sqlx::{Column, Executor, Row as _};

use super::MetaError;
use super::sql::{Arg, Cell, Row, SqlConn, SqlTxConn, Statement, execute_each, joined};

/// What differs between databases at the statement level.
pub(crate) trait Flavor: sqlx::Database<Arguments: sqlx::IntoArguments<Self>> {
    fn bind<'q>(q: Query<'q, Self, Self::Arguments>, arg: &Arg)
    -> Query<'q, Self, Self::Arguments>;
    fn cell(row: &Self::Row, i: usize) -> Result<Cell, MetaError>;
    /// The statement, written with `?1, ?2, …`, in this database's
    /// placeholder syntax, for `args` arguments.
    fn sql(sql: &str, args: usize) -> Cow<'_, str>;
    fn rows_affected(done: &Self::QueryResult) -> u64;
    /// Whether one query may hold several statements with arguments:
    /// SQLite binds anonymous `?` in order across all of them (see
    /// [`joined`]); a PostgreSQL prepared statement holds one.
    const MANY_STATEMENTS_PER_QUERY: bool = false;
}

/// A sqlx connection or transaction of database `DB`.
pub(crate) struct Conn<DB, C>(pub(crate) C, PhantomData<DB>);

impl<DB, C> Conn<DB, C> {
    pub(crate) fn new(c: C) -> Conn<DB, C> {
        Conn(c, PhantomData)
    }
}

fn names<DB: sqlx::Database>(row: &DB::Row) -> Arc<[String]> {
    row.columns().iter().map(|c| c.name().to_owned()).collect()
}

fn convert<DB: Flavor>(row: &DB::Row, names: &Arc<[String]>) -> Result<Row, MetaError> {
    let cells = (0..names.len())
        .map(|i| DB::cell(row, i))
        .collect::<Result<_, _>>()?;
    Ok(Row::new(names.clone(), cells))
}

fn query<'q, DB: Flavor>(sql: &str, args: &[Arg]) -> Query<'q, DB, DB::Arguments> {
    let sql = DB::sql(sql, args.len()).into_owned();
    args.iter()
        .fold(sqlx::query::<DB>(sqlx::AssertSqlSafe(sql)), DB::bind)
}

#[async_trait]
impl<DB, C> SqlConn for Conn<DB, C>
where
    DB: Flavor,
    C: DerefMut<Target = DB::Connection> + Send,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    async fn fetch(&mut self, sql: &str, args: &[Arg]) -> Result<Vec<Row>, MetaError> {
        let rows = query::<DB>(sql, args).fetch_all(&mut *self.0).await?;
        let Some(head) = rows.first() else {
            return Ok(Vec::new());
        };
        let names = names::<DB>(head);
        rows.iter().map(|r| convert::<DB>(r, &names)).collect()
    }

    async fn fetch_each(
        &mut self,
        sql: &str,
        args: &[Arg],
        each: &mut (dyn FnMut(Row) -> Result<(), MetaError> + Send),
    ) -> Result<(), MetaError> {
        let mut rows = query::<DB>(sql, args).fetch(&mut *self.0);
        let mut cols = None;
        while let Some(row) = rows.try_next().await? {
            let cols = cols.get_or_insert_with(|| names::<DB>(&row));
            each(convert::<DB>(&row, cols)?)?;
        }
        Ok(())
    }

    async fn execute(&mut self, sql: &str, args: &[Arg]) -> Result<u64, MetaError> {
        let done = query::<DB>(sql, args).execute(&mut *self.0).await?;
        Ok(DB::rows_affected(&done))
    }

    async fn execute_script(&mut self, sql: &str) -> Result<(), MetaError> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn execute_all(&mut self, statements: &[Statement]) -> Result<(), MetaError> {
        if DB::MANY_STATEMENTS_PER_QUERY
            && statements.len() > 1
            && let Some((sql, args)) = joined(statements)
        {
            return self.execute(&sql, &args).await.map(drop);
        }
        execute_each(self, statements).await
    }
}

#[async_trait]
impl<DB> SqlTxConn for Conn<DB, sqlx::Transaction<'static, DB>>
where
    DB: Flavor,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    async fn commit(self: Box<Self>) -> Result<(), MetaError> {
        self.0.commit().await?;
        Ok(())
    }
}
