//! Cancellation that works whatever the operators do: every node of a physical plan
//! is wrapped in [`GuardedExec`], which checks the query's deadline and cancel flag
//! each time a batch passes, and the batch's size against the per-batch limit
//! ([`super::limits`]) when the node made it much larger than its inputs' batches
//! (a scan's batches hold stored rows and pass through; growth is what a query adds).
//! Before it runs, the plan is checked for literal values (after constant folding)
//! too large to be repeated over the rows of a batch.
//!
//! Why: aborting a tokio task only takes effect when it yields, and some operators
//! (a cross join feeding an aggregate) can compute for minutes without ever returning
//! `Pending`. A check at every batch boundary stops them within one batch.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

/// The deadline and cancel flag of one query.
#[derive(Debug, Clone)]
pub(crate) struct QueryGuard {
    cancelled: Arc<AtomicBool>,
    deadline: Instant,
    /// The most bytes a batch may hold.
    max_batch: usize,
}

impl QueryGuard {
    pub fn new(deadline: Instant, max_batch: usize) -> Self {
        Self {
            cancelled: Arc::new(AtomicBool::new(false)),
            deadline,
            max_batch,
        }
    }

    /// Stops the query at its next batch.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// True once the deadline has passed.
    pub fn timed_out(&self) -> bool {
        Instant::now() >= self.deadline
    }

    fn check(&self) -> Result<()> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(DataFusionError::Execution("query cancelled".into()));
        }
        if self.timed_out() {
            return Err(DataFusionError::Execution(
                "query time limit reached".into(),
            ));
        }
        Ok(())
    }

    /// Wraps every node of `plan` (children first) in a [`GuardedExec`], after
    /// checking its literals against the rows of a batch (`batch_rows`).
    pub fn guard_plan(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        batch_rows: usize,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.guard_node(plan, batch_rows).map(|(plan, _, _)| plan)
    }

    /// The guarded node, the largest batch its guard has seen, and whether its input
    /// is a single row (a `SELECT` without `FROM`).
    fn guard_node(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        batch_rows: usize,
    ) -> Result<(Arc<dyn ExecutionPlan>, Arc<AtomicUsize>, bool)> {
        let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
        let mut inputs = Vec::new();
        let mut one_row =
            children.is_empty() && matches!(plan.name(), "PlaceholderRowExec" | "EmptyExec");
        let plan = if children.is_empty() {
            plan
        } else {
            let mut guarded = Vec::with_capacity(children.len());
            one_row = true;
            for child in children {
                let (child, seen, child_one_row) = self.guard_node(child, batch_rows)?;
                guarded.push(child);
                inputs.push(seen);
                one_row &= child_one_row;
            }
            // The guard passes its input's properties through unchanged.
            plan.replace_children(
                guarded,
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
            )?
        };
        if !one_row {
            self.check_literals(plan.as_ref(), batch_rows)?;
        }
        let seen = Arc::new(AtomicUsize::new(0));
        let node = Arc::new(GuardedExec {
            input: plan,
            guard: self.clone(),
            seen: Arc::clone(&seen),
            inputs,
        });
        Ok((node, seen, one_row))
    }

    /// Refuses a literal (after constant folding) that, repeated over the rows of a
    /// batch, would pass the per-batch limit: DataFusion builds such arrays whole.
    fn check_literals(&self, plan: &dyn ExecutionPlan, batch_rows: usize) -> Result<()> {
        let most = self.max_batch / batch_rows.max(1);
        let mut found = None;
        plan.apply_expressions(&mut |root| {
            root.apply(|e| {
                if let Some(lit) = e.downcast_ref::<Literal>() {
                    let bytes = lit.value().size();
                    if bytes > most {
                        found = Some(bytes);
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        match found {
            Some(bytes) => Err(super::limits::too_large(
                &format!("a value of {bytes} bytes repeated for each of {batch_rows} rows"),
                bytes.saturating_mul(batch_rows),
                self.max_batch,
            )),
            None => Ok(()),
        }
    }
}

/// Passes its input through, checking the [`QueryGuard`] at every batch.
#[derive(Debug)]
pub(crate) struct GuardedExec {
    input: Arc<dyn ExecutionPlan>,
    guard: QueryGuard,
    /// The largest batch this node has passed (its parent compares with it).
    seen: Arc<AtomicUsize>,
    /// `seen` of the guards of this node's inputs.
    inputs: Vec<Arc<AtomicUsize>>,
}

impl DisplayAs for GuardedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "GuardedExec")
    }
}

impl ExecutionPlan for GuardedExec {
    fn name(&self) -> &str {
        "GuardedExec"
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.input.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
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
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("GuardedExec needs one child".into()))?;
        Ok(Arc::new(GuardedExec {
            input,
            guard: self.guard.clone(),
            seen: Arc::clone(&self.seen),
            inputs: self.inputs.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.guard.check()?;
        let stream = self.input.execute(partition, context)?;
        let schema = stream.schema();
        let guard = self.guard.clone();
        let seen = Arc::clone(&self.seen);
        let inputs = self.inputs.clone();
        let checked = stream.map(move |batch| {
            guard.check()?;
            let batch = batch?;
            let bytes = super::limits::batch_bytes(&batch);
            seen.fetch_max(bytes, Ordering::Relaxed);
            // Stored rows pass (a leaf, or a node passing its inputs' batches on);
            // a node that made a batch much larger than any it was given is refused.
            if bytes > guard.max_batch && !inputs.is_empty() {
                let largest_input = inputs
                    .iter()
                    .map(|s| s.load(Ordering::Relaxed))
                    .max()
                    .unwrap_or(0);
                if bytes > largest_input.saturating_mul(2) {
                    return Err(super::limits::too_large(
                        "a batch of the query",
                        bytes,
                        guard.max_batch,
                    ));
                }
            }
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, checked)))
    }
}
