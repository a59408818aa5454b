//! AdamW over the network's weight tensors.

use tch::{TchError, Tensor};

/// Adam with decoupled weight decay (Loshchilov & Hutter), updating tensors in place.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    steps: i32,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// An optimiser for `params` (shallow clones of the trainable tensors).
    pub fn new(params: Vec<Tensor>, weight_decay: f64) -> Self {
        let m = params.iter().map(Tensor::zeros_like).collect();
        let v = params.iter().map(Tensor::zeros_like).collect();
        Self {
            params,
            m,
            v,
            steps: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// The first and second moments of every parameter, in parameter order.
    pub fn moments(&self) -> impl Iterator<Item = (&Tensor, &Tensor)> {
        self.m.iter().zip(&self.v)
    }

    /// Every parameter with its moments, for restoring a saved state in place.
    pub fn params_and_moments(&self) -> impl Iterator<Item = (&Tensor, (&Tensor, &Tensor))> {
        self.params.iter().zip(self.m.iter().zip(&self.v))
    }

    /// Replaces the moments (one pair per parameter, same shapes) and the update
    /// count: the state of another optimiser carried over to these parameters.
    pub fn set_state(&mut self, m: Vec<Tensor>, v: Vec<Tensor>, steps: i32) {
        debug_assert_eq!(m.len(), self.params.len());
        debug_assert_eq!(v.len(), self.params.len());
        self.m = m;
        self.v = v;
        self.steps = steps;
    }

    /// Updates taken so far (the bias correction depends on it).
    pub fn steps(&self) -> i32 {
        self.steps
    }

    /// Sets the update count of a restored state.
    pub fn set_steps(&mut self, steps: i32) {
        self.steps = steps;
    }

    /// Clears the gradients of every parameter.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr`; parameters without a gradient are left alone.
    pub fn step(&mut self, lr: f64) -> Result<(), TchError> {
        self.steps += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.steps);
        let c2 = 1.0 - b2.powi(self.steps);
        tch::no_grad(|| -> Result<(), TchError> {
            for ((p, m), v) in self.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = m.f_mul_scalar_(b1)?.f_add_(&g.f_mul_scalar(1.0 - b1)?)?;
                let _ = v
                    .f_mul_scalar_(b2)?
                    .f_add_(&g.f_square()?.f_mul_scalar(1.0 - b2)?)?;
                let denom = v.f_div_scalar(c2)?.f_sqrt()?.f_add_scalar(self.eps)?;
                let update = m.f_div_scalar(c1)?.f_div(&denom)?;
                let decay = p.f_mul_scalar(self.weight_decay)?;
                let _ = p.f_sub_(&update.f_add(&decay)?.f_mul_scalar(lr)?)?;
            }
            Ok(())
        })
    }
}
