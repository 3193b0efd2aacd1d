//! The backward of a convolution through what its forward fused after it:
//! a relu (the mask applied image by image on the direct path) or a relu
//! and a 2×2 max pool (each window's gradient spread to its maximum).

use super::conv::{check_backward, direct_grid, Conv2dIm2col, POOL};
use super::cpu_ops::{relu_mask, MaxPool2d};
use super::direct::{self, Dy, Grid};
use super::im2col::{geom, Geom};
use super::{par, scratch};
use candle_core::Result;

/// A backward's input: the images and their shape, and the padded grids
/// a training forward kept for them, if any.
pub type Images<'a> = ((&'a [f32], &'a [usize]), Option<&'a [f32]>);

impl Conv2dIm2col {
    /// The floats of the padded images a training forward keeps
    /// ([`Self::forward_train_into`]): zero unless the convolution runs
    /// direct.
    pub fn grids_len(&self, xd: &[usize], wd: &[usize]) -> Result<usize> {
        let g = geom(xd, wd, self.stride, self.dilation, self.pad)?;
        Ok(direct_grid(&g, false).map_or(0, |gr| xd[0] * gr.padded_len()))
    }

    /// [`Self::backward_into`] through a fused relu whose output is `y`:
    /// on the direct path the mask is applied image by image inside the
    /// backward; elsewhere `dy` is masked in place first. `padded`: the
    /// grids a training forward kept ([`Self::forward_train_into`]).
    pub fn backward_relu_into(
        &self,
        (x, padded): Images,
        w: (&[f32], &[usize]),
        (dy, y): (&mut [f32], &[f32]),
        dx: Option<&mut [f32]>,
        (dw, db): (&mut [f32], &mut [f32]),
    ) -> Result<()> {
        let g = geom(x.1, w.1, self.stride, self.dilation, self.pad)?;
        if y.len() != dy.len() {
            candle_core::bail!(
                "conv backward: {} outputs for {} gradients",
                y.len(),
                dy.len()
            )
        }
        match direct_grid(&g, dx.is_some()) {
            Some(gr) => {
                let b = x.1[0];
                check_backward(&g, x, dy.len() == b * g.f * g.p(), dx.as_deref(), (dw, db))?;
                let dy = Dy::Relu { dy, y };
                run_direct(&gr, (&g, b), (x.0, padded, w.0, dy), (dx, dw, db))
            }
            None => {
                relu_mask(dy, y);
                self.backward_into(x, w, dy, dx, dw, db)
            }
        }
    }

    /// The backward of a convolution with a fused max pool, from the pooled
    /// outputs' gradient `gy` (relu already applied: zero where the pooled
    /// value is not positive, which is the relu's output at the window's
    /// maximum) and the maxima's offsets `arg` of [`Self::forward_train_into`]:
    /// each window's gradient goes to its first maximum, and from there as
    /// [`Self::backward_into`].
    pub fn backward_pooled_into(
        &self,
        (x, padded): Images,
        w: (&[f32], &[usize]),
        (gy, arg): (&[f32], &[u16]),
        dx: Option<&mut [f32]>,
        dw: &mut [f32],
        db: &mut [f32],
    ) -> Result<()> {
        let g = geom(x.1, w.1, self.stride, self.dilation, self.pad)?;
        let b = x.1[0];
        let fits = self.pool && gy.len() == b * self.out_len(x.1, w.1)? && arg.len() == gy.len();
        check_backward(&g, x, fits, dx.as_deref(), (dw, db))?;
        let pool = MaxPool2d::new(POOL.0, POOL.1, true);
        // Direct: each image's dy is spread from the pooled gradient while
        // in cache, with no batch-wide full-size buffer.
        if let Some(gr) = direct_grid(&g, dx.is_some()) {
            let dy = Dy::Pooled { gy, arg, pool };
            return run_direct(&gr, (&g, b), (x.0, padded, w.0, dy), (dx, dw, db));
        }
        scratch::with([b * g.f * g.p()], |[dy]| {
            dy.fill(0.0);
            pool.backward_into(arg, (g.oh, g.ow), gy, dy);
            self.backward_into(x, w, dy, dx, dw, db)
        })
    }
}

/// [`direct::backward`] of a checked convolution `g` over `b` images, from
/// the images or the grids their forward kept (which must fit the grid).
pub(super) fn run_direct(
    gr: &Grid,
    (g, b): (&Geom, usize),
    (x, padded, w, dy): (&[f32], Option<&[f32]>, &[f32], Dy),
    (dx, dw, db): (Option<&mut [f32]>, &mut [f32], &mut [f32]),
) -> Result<()> {
    if padded.is_some_and(|p| p.len() != b * gr.padded_len()) {
        candle_core::bail!("conv backward: kept grids of the wrong size")
    }
    let par = b * g.f * g.p() * g.ckk() >= par::MIN_MACS;
    direct::backward(gr, (x, w, dy), (dx, dw, db), (b, g.f), (padded, par));
    Ok(())
}
