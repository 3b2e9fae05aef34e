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
    let options = Options::from_config(table, &config);
    let dir = config.data_dir.clone();
    let imported = import(&dir, &args.files, &options, move |f| {
        println!(
            "{}: {} rows imported into {} ({} files)",
            f.path.display(),
            f.rows,
            table.name(),
            f.files
        );
    })
    .await?;
    let rows: u64 = imported.iter().map(|f| f.rows).sum();
    println!(
        "{rows} rows from {} files imported into {} in {}",
        imported.len(),
        table.name(),
        dir.display()
    );
    Ok(())
}
