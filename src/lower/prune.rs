//! What each head needs: the inputs its value depends on, and the program
//! cut down to the heads that a set of present inputs can answer (`mtl
//! predict` with some inputs absent never feeds a head zeros for them).

use super::Program;
use std::collections::{BTreeSet, HashMap};

impl Program {
    /// Indices of the steps the values in `slots` depend on.
    pub fn ancestors(&self, slots: &[usize]) -> BTreeSet<usize> {
        let producer: HashMap<usize, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.out, i))
            .collect();
        let mut seen = BTreeSet::new();
        let mut stack = slots.to_vec();
        while let Some(slot) = stack.pop() {
            if let Some(&i) = producer.get(&slot) {
                if seen.insert(i) {
                    stack.extend(self.steps[i].args.iter().copied());
                    stack.extend(self.steps[i].masks.iter().flatten().copied());
                }
            }
        }
        seen
    }

    /// The inputs whose values head `h`'s output depends on.
    pub fn inputs_of_head(&self, h: usize) -> Vec<String> {
        let slot = self.heads[h].1;
        let steps = self.ancestors(&[slot]);
        let mut used: BTreeSet<usize> = steps
            .iter()
            .flat_map(|&i| {
                let s = &self.steps[i];
                s.args.iter().chain(s.masks.iter().flatten()).copied()
            })
            .collect();
        used.insert(slot);
        self.inputs
            .iter()
            .filter(|(_, s, _)| used.contains(s))
            .map(|(n, ..)| n.clone())
            .collect()
    }

    /// The program restricted to the heads that need none of `absent`, with
    /// only the steps and inputs those heads use; and each skipped head with
    /// the absent inputs it needs.
    pub fn without_inputs(&self, absent: &[String]) -> (Program, Vec<(String, Vec<String>)>) {
        let mut kept = vec![];
        let mut skipped = vec![];
        for (i, (h, slot)) in self.heads.iter().enumerate() {
            let needs: Vec<String> = self
                .inputs_of_head(i)
                .into_iter()
                .filter(|n| absent.contains(n))
                .collect();
            if needs.is_empty() {
                kept.push((h.clone(), *slot));
            } else {
                skipped.push((h.name.clone(), needs));
            }
        }
        let roots: Vec<usize> = kept.iter().map(|(_, s)| *s).collect();
        let steps = self.ancestors(&roots);
        let mut p = self.clone();
        p.steps = self
            .steps
            .iter()
            .enumerate()
            .filter(|(i, _)| steps.contains(i))
            .map(|(_, s)| s.clone())
            .collect();
        let used: BTreeSet<usize> = p
            .steps
            .iter()
            .flat_map(|s| s.args.iter().chain(s.masks.iter().flatten()).copied())
            .chain(roots.iter().copied())
            .collect();
        p.inputs.retain(|(_, s, _)| used.contains(s));
        p.heads = kept;
        p.losses.clear();
        (p, skipped)
    }
}

#[cfg(test)]
mod tests {
    use crate::pipeline::Mode;

    #[test]
    fn a_head_is_answered_only_from_the_inputs_it_reads() {
        let src = "model m {\n input a: f32[3]\n input b: f32[2]\n let h = a -> dense(4)\n head x = h -> dense(1) { loss: mse }\n head y = concat(h, b) -> dense(1) { loss: mse }\n head z = b -> dense(2) { loss: mse }\n}";
        let c = crate::compile_str("m.mtl", src, &crate::Options::default());
        let g = c.graph.expect("compiles");
        let p = crate::lower::lower(&g, Mode::Infer).expect("lowers");
        assert_eq!(p.inputs_of_head(0), ["a"]);
        assert_eq!(p.inputs_of_head(1), ["a", "b"]);
        let (q, skipped) = p.without_inputs(&["a".to_string()]);
        assert_eq!(
            skipped,
            [
                ("x".into(), vec!["a".to_string()]),
                ("y".into(), vec!["a".to_string()])
            ]
        );
        assert_eq!(q.heads.len(), 1);
        assert_eq!(q.heads[0].0.name, "z");
        let names: Vec<&str> = q.inputs.iter().map(|(n, ..)| n.as_str()).collect();
        assert_eq!(names, ["b"]);
        assert!(q.steps.iter().all(|s| s.params.as_deref() != Some("h")));
    }
}
