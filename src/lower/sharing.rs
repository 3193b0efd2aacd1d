//! Which parameters each head reaches: the table LibMTL users write by hand
//! ("the shared representation"), derived from the program. Gradient methods
//! take per-task gradients over the groups two or more heads reach; the
//! boundary where shared values enter head-only code is where training cuts
//! the graph so each head's backward stops there.

use super::Program;
use serde::Serialize;
use std::collections::BTreeSet;

/// One layer's parameters (a checkpoint prefix) and who reaches them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub prefix: String,
    /// Indices into [`Sharing::heads`] of the heads whose loss depends on it.
    pub heads: Vec<usize>,
    /// Names of the auxiliary losses that depend on it.
    pub losses: Vec<String>,
    /// Parameter tensor keys, and their element count.
    pub keys: Vec<String>,
    pub params: usize,
    pub trainable: bool,
}

impl Group {
    /// Reached by two or more heads: its gradient is a combination of theirs.
    pub fn is_shared(&self) -> bool {
        self.heads.len() >= 2
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sharing {
    pub heads: Vec<String>,
    /// In program order.
    pub groups: Vec<Group>,
    /// Value slots computed by steps that two or more heads reach and read
    /// by code that at most one reaches (or by a loss): the last shared
    /// representation.
    #[serde(skip)]
    pub boundary: Vec<usize>,
    /// Per step: outside the shared region, so it reads boundary values
    /// through the cut.
    #[serde(skip)]
    pub outside: Vec<bool>,
}

impl Sharing {
    /// Trainable parameter keys of the groups two or more heads reach.
    pub fn shared_keys(&self) -> BTreeSet<String> {
        self.groups
            .iter()
            .filter(|g| g.trainable && g.is_shared())
            .flat_map(|g| g.keys.iter().cloned())
            .collect()
    }

    /// Per key of `keys`: whether two or more heads share it.
    pub fn shared_flags(&self, keys: &[String]) -> Vec<bool> {
        let shared = self.shared_keys();
        keys.iter().map(|k| shared.contains(k)).collect()
    }

    /// Where a training forward splits for per-task gradients.
    pub fn cut(&self) -> super::Cut<'_> {
        super::Cut {
            boundary: &self.boundary,
            outside: &self.outside,
        }
    }

    /// Parameter counts: (shared by two or more heads, of one head alone, of no head).
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for g in &self.groups {
            match g.heads.len() {
                0 => c.2 += g.params,
                1 => c.1 += g.params,
                _ => c.0 += g.params,
            }
        }
        c
    }

    /// The table of `mtl compile --emit sharing`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = self
            .groups
            .iter()
            .map(|g| g.prefix.len())
            .chain([5])
            .max()
            .unwrap_or(5);
        out += &format!("{:<w$}  {:>9}  reached by\n", "layer", "params");
        for g in &self.groups {
            let mut who: Vec<String> = g.heads.iter().map(|&h| self.heads[h].clone()).collect();
            who.extend(g.losses.iter().map(|l| format!("loss {l}")));
            let mark = match (g.is_shared(), g.trainable) {
                (true, true) => "  (shared)",
                (true, false) => "  (shared, frozen)",
                (false, false) => "  (frozen)",
                _ => "",
            };
            out += &format!(
                "{:<w$}  {:>9}  {}{mark}\n",
                g.prefix,
                g.params,
                if who.is_empty() {
                    "-".to_string()
                } else {
                    who.join(", ")
                }
            );
        }
        let (shared, own, none) = self.counts();
        out += &format!(
            "\nshared by two or more heads: {shared} parameters; one head's alone: {own}; no head: {none}\n"
        );
        for (i, h) in self.heads.iter().enumerate() {
            let n: usize = self
                .groups
                .iter()
                .filter(|g| g.heads.contains(&i))
                .map(|g| g.params)
                .sum();
            out += &format!("head {h} reaches {n} parameters\n");
        }
        out
    }
}

impl Program {
    /// Which heads and auxiliary losses reach each parameter group.
    pub fn sharing(&self) -> Sharing {
        let n_heads = self.heads.len();
        // Objectives: heads, then auxiliary losses, each with the slots its loss reads.
        let roots: Vec<Vec<usize>> = self
            .heads
            .iter()
            .map(|(_, s)| vec![*s])
            .chain(self.losses.iter().map(|l| l.slots.clone()))
            .collect();
        let producer: std::collections::HashMap<usize, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.out, i))
            .collect();
        // reach[step] = objectives whose loss depends on the step.
        let mut reach: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); self.steps.len()];
        for (o, slots) in roots.iter().enumerate() {
            for i in self.ancestors(slots) {
                reach[i].insert(o);
            }
        }
        let group = |prefix: &str| {
            let keys: Vec<_> = self
                .param_specs
                .iter()
                .filter(|(k, _)| crate::ir::under(k, prefix))
                .collect();
            Group {
                prefix: prefix.to_string(),
                heads: vec![],
                losses: vec![],
                keys: keys.iter().map(|(k, _)| k.clone()).collect(),
                params: keys
                    .iter()
                    .map(|(_, p)| p.shape.iter().product::<usize>())
                    .sum(),
                trainable: keys.iter().any(|(_, p)| p.trainable),
            }
        };
        let mut groups: Vec<Group> = vec![];
        for (i, st) in self.steps.iter().enumerate() {
            let Some(prefix) = &st.params else { continue };
            let at = match groups.iter().position(|g| &g.prefix == prefix) {
                Some(at) => at,
                None => {
                    groups.push(group(prefix));
                    groups.len() - 1
                }
            };
            let g = &mut groups[at];
            for &o in &reach[i] {
                if o < n_heads {
                    if !g.heads.contains(&o) {
                        g.heads.push(o);
                    }
                } else {
                    let name = &self.losses[o - n_heads].name;
                    if !g.losses.contains(name) {
                        g.losses.push(name.clone());
                    }
                }
            }
        }
        for g in &mut groups {
            g.heads.sort_unstable();
        }
        // A loss's own parameters (a learned temperature).
        for l in &self.losses {
            if let Some(prefix) = &l.params {
                let mut g = group(prefix);
                g.losses.push(l.name.clone());
                groups.push(g);
            }
        }
        // The boundary: values of the shared region (steps two or more heads
        // reach) read outside it or by a loss. One level only: a value shared
        // by three heads and read by a step two of them reach stays inside,
        // so one backward from the boundary covers the region. Auxiliary
        // losses are consumers like any outside step: the region's
        // parameters are exactly the ones heads share.
        let inside: Vec<bool> = reach
            .iter()
            .map(|r| r.iter().filter(|&&o| o < n_heads).count() >= 2)
            .collect();
        let shared = |slot: &usize| producer.get(slot).is_some_and(|&i| inside[i]);
        let mut boundary = BTreeSet::new();
        for (i, st) in self.steps.iter().enumerate() {
            if !inside[i] {
                boundary.extend(st.args.iter().filter(|a| shared(a)));
            }
        }
        boundary.extend(roots.iter().flatten().filter(|s| shared(s)));
        Sharing {
            heads: self.heads.iter().map(|(h, _)| h.name.clone()).collect(),
            groups,
            boundary: boundary.into_iter().collect(),
            outside: inside.iter().map(|i| !i).collect(),
        }
    }
}
