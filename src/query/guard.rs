//! Cancellation that works whatever the operators do: every node of a physical plan
//! is wrapped in [`GuardedExec`], which checks the query's deadline and cancel flag
//! each time a batch passes, and the batch's size against the per-batch limit
//! ([`super::limits`]).
//!
//! Why: aborting a tokio task only takes effect when it yields, and some operators
//! (a cross join feeding an aggregate) can compute for minutes without ever returning
//! `Pending`. A check at every batch boundary stops them within one batch.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

/// The deadline and cancel flag of one query.
#[derive(Debug, Clone)]
pub struct QueryGuard {
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

    /// Wraps every node of `plan` (children first) in a [`GuardedExec`].
    pub fn guard_plan(&self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
        let plan = if children.is_empty() {
            plan
        } else {
            let guarded = children
                .into_iter()
                .map(|c| self.guard_plan(c))
                .collect::<Result<Vec<_>>>()?;
            // The guard passes its input's properties through unchanged.
            plan.replace_children(
                guarded,
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
            )?
        };
        Ok(Arc::new(GuardedExec {
            input: plan,
            guard: self.clone(),
        }))
    }
}

/// Passes its input through, checking the [`QueryGuard`] at every batch.
#[derive(Debug)]
pub struct GuardedExec {
    input: Arc<dyn ExecutionPlan>,
    guard: QueryGuard,
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
        let checked = stream.map(move |batch| {
            guard.check()?;
            let batch = batch?;
            let bytes = super::limits::batch_bytes(&batch);
            if bytes > guard.max_batch {
                return Err(super::limits::too_large(
                    "a batch of the query",
                    bytes,
                    guard.max_batch,
                ));
            }
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, checked)))
    }
}
