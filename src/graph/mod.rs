//! The autograd graph: nodes with named, shape-checked inputs, built once.
//!
//! - [`node`]: the ops, their initialisers and shape rules.
//! - [`Graph`]: nodes in topological order (a plain Vec tape); building a
//!   node infers its shape, and a mismatch is [`Error::Graph`] naming the
//!   node and both shapes. [`Graph::from_specs`] accepts nodes in any order
//!   (as an experiment file lists them), sorts them and reports unknown
//!   inputs and cycles by name.
//! - Backward runs the tape in reverse over the nodes that lead from a
//!   parameter to the loss ([`Graph::backward_order`]); executors asked for
//!   input gradients count those f32 inputs as parameters here
//!   ([`Graph::backward_order_with`]).
//! - [`exec`]: the [`Executor`] trait the backends implement; [`cpu`]: the
//!   CPU reference backend ([`CpuExecutor`], ndarray references only).

pub mod cpu;
pub mod exec;
pub mod gpu;
pub mod init;
pub mod node;
pub mod plan;

use std::collections::HashMap;

pub use cpu::CpuExecutor;
pub use exec::{Batch, Executor, HostData, Optimizer, OptimizerSnapshot, Phase, TrainConfig};
pub use node::{Init, Op, Value};

use crate::error::{Error, Result};

/// Index of a node in its graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub value: Value,
}

/// A node as written before sorting: inputs by name.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    by_name: HashMap<String, NodeId>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node whose inputs already exist; infers and checks its shape.
    pub fn add(&mut self, name: &str, op: Op, inputs: &[NodeId]) -> Result<NodeId> {
        if self.by_name.contains_key(name) {
            return Err(Error::graph(name, "a node with this name already exists"));
        }
        let values: Vec<&Value> = inputs.iter().map(|&i| &self.nodes[i.0].value).collect();
        let value = node::infer(&op, &values).map_err(|m| {
            let names: Vec<&str> = inputs
                .iter()
                .map(|&i| self.nodes[i.0].name.as_str())
                .collect();
            Error::graph(name, format!("{} with inputs {names:?}: {m}", op.kind()))
        })?;
        let id = NodeId(self.nodes.len());
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs: inputs.to_vec(),
            value,
        });
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    /// Adds a node naming its inputs.
    pub fn add_named(&mut self, name: &str, op: Op, inputs: &[&str]) -> Result<NodeId> {
        let ids = inputs
            .iter()
            .map(|i| {
                self.id(i).ok_or_else(|| Error::UnknownInput {
                    node: name.to_string(),
                    input: i.to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.add(name, op, &ids)
    }

    /// Builds a graph from nodes listed in any order: checks every input
    /// name, sorts topologically (stable: ties keep the listed order) and
    /// reports a cycle by the names on it.
    pub fn from_specs(specs: &[NodeSpec]) -> Result<Self> {
        let index: HashMap<&str, usize> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        if index.len() != specs.len() {
            let mut seen = std::collections::HashSet::new();
            let dup = specs
                .iter()
                .find(|s| !seen.insert(s.name.as_str()))
                .unwrap();
            return Err(Error::graph(
                &dup.name,
                "a node with this name already exists",
            ));
        }
        for s in specs {
            if let Some(bad) = s.inputs.iter().find(|i| !index.contains_key(i.as_str())) {
                return Err(Error::UnknownInput {
                    node: s.name.clone(),
                    input: bad.clone(),
                });
            }
        }
        let mut graph = Graph::new();
        let mut placed = vec![false; specs.len()];
        while graph.nodes.len() < specs.len() {
            let ready = (0..specs.len())
                .find(|&i| !placed[i] && specs[i].inputs.iter().all(|n| placed[index[n.as_str()]]));
            match ready {
                Some(i) => {
                    let s = &specs[i];
                    let inputs: Vec<&str> = s.inputs.iter().map(String::as_str).collect();
                    graph.add_named(&s.name, s.op.clone(), &inputs)?;
                    placed[i] = true;
                }
                None => {
                    let stuck: Vec<&str> = (0..specs.len())
                        .filter(|&i| !placed[i])
                        .map(|i| specs[i].name.as_str())
                        .collect();
                    return Err(Error::Cycle(stuck.join(" -> ")));
                }
            }
        }
        Ok(graph)
    }

    pub fn id(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    /// The node called `name`, or an error naming it.
    pub fn expect_id(&self, name: &str) -> Result<NodeId> {
        self.id(name)
            .ok_or_else(|| Error::graph(name, "no node with this name"))
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    /// Nodes in topological (forward) order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn ids(&self) -> impl DoubleEndedIterator<Item = NodeId> + '_ {
        (0..self.nodes.len()).map(NodeId)
    }

    /// The node that reads `id`, when exactly one does (fusions pair a
    /// node with its only reader).
    pub fn only_reader(&self, id: NodeId) -> Option<NodeId> {
        let mut readers = self.ids().filter(|&r| self.node(r).inputs.contains(&id));
        match (readers.next(), readers.next()) {
            (Some(r), None) => Some(r),
            _ => None,
        }
    }

    /// Trainable parameters in definition order.
    pub fn params(&self) -> Vec<NodeId> {
        self.ids()
            .filter(|&i| matches!(self.node(i).op, Op::Param { .. }))
            .collect()
    }

    /// Checks that every node of `sources` is an f32 input of this graph
    /// (the nodes an executor can give input gradients for; token ids and
    /// labels are u32 and have none).
    pub fn check_gradient_sources(&self, sources: &[NodeId]) -> Result<()> {
        for &s in sources {
            let Some(node) = self.nodes.get(s.0) else {
                return Err(Error::graph(
                    format!("#{}", s.0),
                    "an input gradient was asked for a node not in this graph",
                ));
            };
            match &node.op {
                Op::Input { dtype, .. } if *dtype == crate::tensor::DType::F32 => {}
                Op::Input { dtype, .. } => {
                    return Err(Error::graph(
                        &node.name,
                        format!(
                            "an input gradient was asked, but this input is {dtype:?}: \
                             only f32 inputs have one (for tokens, read the gradient of the \
                             embedding's output)"
                        ),
                    ))
                }
                op => {
                    return Err(Error::graph(
                        &node.name,
                        format!(
                            "an input gradient was asked, but this node is {}, not Input",
                            op.kind()
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Data inputs in definition order.
    pub fn inputs(&self) -> Vec<NodeId> {
        self.ids()
            .filter(|&i| matches!(self.node(i).op, Op::Input { .. }))
            .collect()
    }

    /// Which nodes need a gradient for a backward pass from `loss`: those
    /// that depend on a parameter and lead to the loss.
    pub fn needs_grad(&self, loss: NodeId) -> Vec<bool> {
        self.needs_grad_with(loss, &[])
    }

    /// As [`Graph::needs_grad`], with the input nodes `sources` counted as
    /// parameters: they and the nodes depending on them need a gradient too
    /// (input gradients, e.g. saliency w.r.t. the image).
    pub fn needs_grad_with(&self, loss: NodeId, sources: &[NodeId]) -> Vec<bool> {
        let n = self.nodes.len();
        let mut from_param = vec![false; n];
        for id in self.ids() {
            let node = self.node(id);
            from_param[id.0] = matches!(node.op, Op::Param { .. })
                || sources.contains(&id)
                || node.inputs.iter().any(|i| from_param[i.0]);
        }
        let mut to_loss = vec![false; n];
        to_loss[loss.0] = true;
        for id in self.ids().rev() {
            if to_loss[id.0] {
                for i in &self.node(id).inputs {
                    to_loss[i.0] = true;
                }
            }
        }
        (0..n).map(|i| from_param[i] && to_loss[i]).collect()
    }

    /// The nodes whose backward runs, in reverse topological order.
    pub fn backward_order(&self, loss: NodeId) -> Vec<NodeId> {
        self.backward_order_with(loss, &[])
    }

    /// As [`Graph::backward_order`], with input gradients for `sources`
    /// (see [`Graph::needs_grad_with`]).
    pub fn backward_order_with(&self, loss: NodeId, sources: &[NodeId]) -> Vec<NodeId> {
        let needs = self.needs_grad_with(loss, sources);
        self.ids()
            .rev()
            .filter(|&i| {
                needs[i.0] && !matches!(self.node(i).op, Op::Param { .. } | Op::Input { .. })
            })
            .filter(|&i| i.0 <= loss.0)
            .collect()
    }
}
