//! `hookscope import`: appends history files to a lake no server runs on, and prints
//! the rows each added.

use anyhow::Context;

use super::ImportArgs;
use crate::config::Config;
use crate::import::{Options, import};
use crate::tables::Table;

pub async fn run(args: ImportArgs, config: Config) -> anyhow::Result<()> {
    let table = Table::from_name(&args.table)
        .with_context(|| format!("--table {}: write deliveries or outcomes", args.table))?;
    let options = Options::from_config(table, &config).map_err(anyhow::Error::msg)?;
    let dir = config.data_dir.clone();
    let imported = import(&dir, &args.files, &options, move |f| {
        println!(
            "{}: {} imported into {} ({})",
            f.path.display(),
            count(f.rows, "row"),
            table.name(),
            count(f.files, "Parquet file")
        );
    })
    .await?;
    let rows: u64 = imported.iter().map(|f| f.rows).sum();
    println!(
        "{} from {} imported into {} in {}",
        count(rows, "row"),
        count(imported.len() as u64, "file"),
        table.name(),
        dir.display()
    );
    Ok(())
}

/// `1 row`, `2 rows`.
fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
