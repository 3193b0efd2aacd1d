//! A transport for tests: the ranks are threads of one process and each
//! collective meets at a barrier. No process can die here, so it has no
//! timeout.

use super::{Collective, CommError};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f64>>>,
    bytes: Mutex<Vec<u8>>,
}

pub struct Local {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

/// `size` connected ranks.
pub fn group(size: usize) -> Vec<Local> {
    let shared = Arc::new(Shared {
        barrier: Barrier::new(size),
        slots: Mutex::new(vec![vec![]; size]),
        bytes: Mutex::new(vec![]),
    });
    (0..size)
        .map(|rank| Local {
            rank,
            size,
            shared: shared.clone(),
        })
        .collect()
}

fn poisoned<T>(_: T) -> CommError {
    CommError("a rank thread panicked".into())
}

impl Local {
    fn sum(&self, buf: &mut [f64]) -> Result<(), CommError> {
        self.shared.slots.lock().map_err(poisoned)?[self.rank] = buf.to_vec();
        self.shared.barrier.wait();
        {
            let slots = self.shared.slots.lock().map_err(poisoned)?;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = slots.iter().map(|s| s[i]).sum();
            }
        }
        self.shared.barrier.wait();
        Ok(())
    }
}

impl Collective for Local {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<(), CommError> {
        let mut w: Vec<f64> = buf.iter().map(|v| *v as f64).collect();
        self.sum(&mut w)?;
        // Summed in f64, in rank order: an order MPI may also take.
        for (b, s) in buf.iter_mut().zip(w) {
            *b = s as f32;
        }
        Ok(())
    }
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<(), CommError> {
        self.sum(buf)
    }
    fn broadcast(&self, buf: &mut Vec<u8>, root: usize) -> Result<(), CommError> {
        if self.rank == root {
            *self.shared.bytes.lock().map_err(poisoned)? = buf.clone();
        }
        self.shared.barrier.wait();
        if self.rank != root {
            *buf = self.shared.bytes.lock().map_err(poisoned)?.clone();
        }
        self.shared.barrier.wait();
        Ok(())
    }
    fn barrier(&self, _patience: Duration) -> Result<(), CommError> {
        self.shared.barrier.wait();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
