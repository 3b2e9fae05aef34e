//! A vectorised `lag(x)` for the shape retry analyses have: a window partitioned by
//! a high-cardinality key (`dedup_key`), most partitions one or two rows, over input
//! already sorted by the partition keys. DataFusion's `BoundedWindowAggExec` keeps
//! state per partition, which dominated such queries (benches/RESULTS.md); this operator computes
//! the same column a batch at a time: shift by one, null at partition starts.
//!
//! Invariants:
//! - It replaces a window node only when every window function of the node behaves
//!   exactly like `lag(x)` with offset 1, no default and nulls respected: each one's
//!   own DataFusion evaluator is asked on probe rows, and the node is left alone on
//!   any other answer (`lead`, another offset, a default, `IGNORE NULLS`, …).
//! - The replacement keeps the node's schema, ordering, distribution and input
//!   requirements (it delegates them to the node it replaces), so the rest of the
//!   plan is unchanged; partitions are continued across batches.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::buffer::NullBuffer;
use arrow::compute::kernels::cmp::distinct;
use arrow::compute::{cast, concat, or, take};
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::window::{StandardWindowExpr, WindowExpr};
use datafusion::physical_expr_common::sort_expr::OrderingRequirements;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::distribution_requirements::InputDistributionRequirements;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::windows::BoundedWindowAggExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;

/// The optimizer rule that puts [`LagExec`] in place of qualifying window nodes.
#[derive(Debug, Default)]
pub(crate) struct LagWindowRule;

impl PhysicalOptimizerRule for LagWindowRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(window) = node.downcast_ref::<BoundedWindowAggExec>() else {
                return Ok(Transformed::no(node));
            };
            match LagExec::try_new(window, Arc::clone(&node))? {
                Some(lag) => Ok(Transformed::yes(Arc::new(lag) as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "hookscope_lag_window"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// True if `expr` computes `lag(x)`: offset 1, null default, nulls respected.
fn is_plain_lag(expr: &Arc<dyn WindowExpr>) -> Result<bool> {
    let Some(standard) = expr.as_any().downcast_ref::<StandardWindowExpr>() else {
        return Ok(false);
    };
    let function = standard.get_standard_func_expr();
    let args = function.expressions();
    if args.len() != 1 {
        return Ok(false);
    }
    let field = function.field()?;
    // Probe rows [10, null, 30, 40] of the function's own type: lag(x) answers
    // [null, 10, null, 30]; lead, other offsets, defaults and IGNORE NULLS do not.
    let probe: ArrayRef = Arc::new(Int64Array::from(vec![Some(10), None, Some(30), Some(40)]));
    let Ok(probe) = cast(&probe, field.data_type()) else {
        return Ok(false);
    };
    let expected: ArrayRef = Arc::new(Int64Array::from(vec![None, Some(10), None, Some(30)]));
    let Ok(expected) = cast(&expected, field.data_type()) else {
        return Ok(false);
    };
    let Ok(mut evaluator) = function.create_evaluator() else {
        return Ok(false);
    };
    match evaluator.evaluate_all(&[probe], 4) {
        Ok(answer) => Ok(answer.to_data() == expected.to_data()),
        Err(_) => Ok(false),
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct LagExec {
    /// The window node replaced: its schema, properties and requirements are kept.
    window: Arc<dyn ExecutionPlan>,
    input: Arc<dyn ExecutionPlan>,
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// Each window function's argument, in the node's output order.
    values: Vec<Arc<dyn PhysicalExpr>>,
    metrics: ExecutionPlanMetricsSet,
}

impl LagExec {
    fn try_new(
        window: &BoundedWindowAggExec,
        node: Arc<dyn ExecutionPlan>,
    ) -> Result<Option<LagExec>> {
        if window.input_order_mode != InputOrderMode::Sorted || window.window_expr().is_empty() {
            return Ok(None);
        }
        let partition_by = window.window_expr()[0].partition_by().to_vec();
        if partition_by.is_empty() {
            return Ok(None);
        }
        let mut values = Vec::new();
        for expr in window.window_expr() {
            if expr.partition_by() != partition_by.as_slice() || !is_plain_lag(expr)? {
                return Ok(None);
            }
            let standard = expr
                .as_any()
                .downcast_ref::<StandardWindowExpr>()
                .ok_or_else(|| DataFusionError::Internal("checked above".into()))?;
            values.push(Arc::clone(
                &standard.get_standard_func_expr().expressions()[0],
            ));
        }
        Ok(Some(LagExec {
            input: Arc::clone(window.input()),
            window: node,
            partition_by,
            values,
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

impl DisplayAs for LagExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "LagExec: {} lag column(s) over sorted partitions, in place of BoundedWindowAggExec",
            self.values.len()
        )
    }
}

impl ExecutionPlan for LagExec {
    fn name(&self) -> &str {
        "LagExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.window.properties()
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.window.input_distribution_requirements()
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        self.window.required_input_ordering()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        self.window.benefits_from_input_partitioning()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.window.apply_expressions(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let window = Arc::clone(&self.window).replace_children(children, options)?;
        let bounded = window
            .downcast_ref::<BoundedWindowAggExec>()
            .ok_or_else(|| DataFusionError::Internal("LagExec wraps a window node".into()))?;
        match LagExec::try_new(bounded, Arc::clone(&window))? {
            Some(lag) => Ok(Arc::new(lag)),
            None => Ok(window),
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = self.schema();
        let mut state = Carry {
            schema: Arc::clone(&schema),
            partition_by: self.partition_by.clone(),
            values: self.values.clone(),
            last_key: None,
            last_values: Vec::new(),
        };
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let stream = input.map(move |batch| {
            let batch = batch?;
            let timer = metrics.elapsed_compute().timer();
            let out = state.next(&batch);
            timer.done();
            out.inspect(|b| metrics.record_output(b.num_rows()))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// One partition's stream state: the last row's partition key and values.
struct Carry {
    schema: arrow::datatypes::SchemaRef,
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    values: Vec<Arc<dyn PhysicalExpr>>,
    last_key: Option<Vec<ScalarValue>>,
    last_values: Vec<ScalarValue>,
}

impl Carry {
    fn next(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.schema)));
        }
        let keys: Vec<ArrayRef> = self
            .partition_by
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<Result<_>>()?;
        // starts[i]: row i begins a partition (row 0: unless it continues the last
        // batch's).
        let continues = match &self.last_key {
            Some(last) => keys
                .iter()
                .zip(last)
                .map(|(k, l)| ScalarValue::try_from_array(k, 0).map(|v| &v == l))
                .collect::<Result<Vec<bool>>>()?
                .into_iter()
                .all(|same| same),
            None => false,
        };
        let mut later: Option<BooleanArray> = None;
        for k in &keys {
            let changed = distinct(&k.slice(1, n - 1), &k.slice(0, n - 1))?;
            later = Some(match later {
                Some(acc) => or(&acc, &changed)?,
                None => changed,
            });
        }
        // Index i of `[carried value, values…]` is the row before row i.
        let mut valid = Vec::with_capacity(n);
        valid.push(continues);
        match &later {
            Some(changed) => valid.extend((0..n - 1).map(|i| !changed.value(i))),
            None => valid.extend(std::iter::repeat_n(true, n - 1)),
        }
        let indices = UInt32Array::new((0..n as u32).collect(), Some(NullBuffer::from(valid)));
        let mut columns = batch.columns().to_vec();
        let mut last_values = Vec::with_capacity(self.values.len());
        for (i, expr) in self.values.iter().enumerate() {
            let values = expr.evaluate(batch)?.into_array(n)?;
            let carried = match self.last_values.get(i) {
                Some(v) if continues => v.to_array_of_size(1)?,
                _ => arrow::array::new_null_array(values.data_type(), 1),
            };
            let shifted = concat(&[carried.as_ref(), values.as_ref()])?;
            let lagged = take(&shifted, &indices, None)?;
            let field_type = self.schema.field(columns.len()).data_type();
            columns.push(if lagged.data_type() == field_type {
                lagged
            } else {
                cast(&lagged, field_type)?
            });
            last_values.push(ScalarValue::try_from_array(&values, n - 1)?);
        }
        self.last_values = last_values;
        self.last_key = Some(
            keys.iter()
                .map(|k| ScalarValue::try_from_array(k, n - 1))
                .collect::<Result<_>>()?,
        );
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// Rows with runs of one to five per key (keys and values with nulls), in small
    /// batches so that partitions cross batch boundaries.
    fn table() -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("g", DataType::Int64, true),
            Field::new("t", DataType::Int64, false),
            Field::new("v", DataType::Int64, true),
        ]));
        let mut batches = Vec::new();
        let mut row = 0i64;
        for b in 0..40 {
            let n = 3 + (b % 5) as usize;
            let ks: Vec<Option<String>> = (0..n)
                .map(|i| {
                    let r = row + i as i64;
                    (r % 11 != 0).then(|| format!("key{}", (r * 7919) % 97))
                })
                .collect();
            let gs: Vec<Option<i64>> = (0..n)
                .map(|i| (i % 3 != 0).then_some(i as i64 % 2))
                .collect();
            let ts: Vec<i64> = (0..n).map(|i| (row + i as i64) * 13 % 101).collect();
            let vs: Vec<Option<i64>> = (0..n)
                .map(|i| ((row + i as i64) % 4 != 0).then_some(row + i as i64))
                .collect();
            batches.push(
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(StringArray::from(ks)),
                        Arc::new(Int64Array::from(gs)),
                        Arc::new(Int64Array::from(ts)),
                        Arc::new(Int64Array::from(vs)),
                    ],
                )
                .unwrap(),
            );
            row += n as i64;
        }
        Arc::new(MemTable::try_new(schema, vec![batches]).unwrap())
    }

    fn context(with_rule: bool) -> SessionContext {
        let config = SessionConfig::new()
            .with_batch_size(5)
            .with_target_partitions(3);
        let mut builder = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if with_rule {
            builder = builder.with_physical_optimizer_rule(Arc::new(LagWindowRule));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        ctx.register_table("t", table()).unwrap();
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        let batches = df.collect().await.unwrap();
        let rows = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        (shown, rows)
    }

    #[tokio::test]
    async fn lag_over_sorted_partitions_answers_what_datafusion_does() {
        let (fast, plain) = (context(true), context(false));
        for sql in [
            "SELECT k, t, v, lag(v) OVER (PARTITION BY k ORDER BY t) AS p FROM t ORDER BY k, t, v",
            "SELECT k, g, t, lag(v) OVER (PARTITION BY k, g ORDER BY t) AS p, \
             lag(t) OVER (PARTITION BY k, g ORDER BY t) AS q FROM t ORDER BY k, g, t, v",
            "SELECT k, t, t - lag(t) OVER (PARTITION BY k ORDER BY t DESC) AS gap FROM t ORDER BY k, t, gap",
        ] {
            let (shown, rows) = run(&fast, sql).await;
            assert!(shown.contains("LagExec"), "{sql}\n{shown}");
            assert_eq!(rows, run(&plain, sql).await.1, "{sql}");
        }
    }

    #[tokio::test]
    async fn other_window_functions_are_left_to_datafusion() {
        let (fast, plain) = (context(true), context(false));
        for sql in [
            "SELECT k, t, lead(v) OVER (PARTITION BY k ORDER BY t) AS p FROM t ORDER BY k, t, v",
            "SELECT k, t, lag(v, 2) OVER (PARTITION BY k ORDER BY t) AS p FROM t ORDER BY k, t, v",
            "SELECT k, t, lag(v, 1, 0) OVER (PARTITION BY k ORDER BY t) AS p FROM t ORDER BY k, t, v",
            "SELECT k, t, lag(v) IGNORE NULLS OVER (PARTITION BY k ORDER BY t) AS p FROM t ORDER BY k, t, v",
            "SELECT k, t, lag(v) OVER (PARTITION BY k ORDER BY t) AS p, \
             row_number() OVER (PARTITION BY k ORDER BY t) AS n FROM t ORDER BY k, t, v",
            "SELECT t, lag(v) OVER (ORDER BY t) AS p FROM t ORDER BY t, p",
        ] {
            let (shown, rows) = run(&fast, sql).await;
            assert!(!shown.contains("LagExec"), "{sql}\n{shown}");
            assert_eq!(rows, run(&plain, sql).await.1, "{sql}");
        }
    }
}
