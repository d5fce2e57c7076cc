"""PyTorch oracle of the optimizer tests: torch.optim.SGD, VICReg's LARS and
apex's LARC (around SGD, as SwAV uses it), written out below, stepped on
parameters and gradients the Go test generated.

usage: torch_optim.py INPUT.json > OUTPUT.json

The input holds the parameters (groups of {shape, p, grads}, a gradient per
step or null for none) and the cases to run on them: {rule, momentum, ratio,
eps, lrs (one per step), groups: [{wd, fixed_lr, no_adapt}]}. The output
holds, for every case and step, each parameter's values and its momentum
buffer (null where the optimizer keeps none), as float32 values.
"""
import json
import sys

import torch


class LARS(torch.optim.Optimizer):
    """VICReg's LARS (main_vicreg.py), unchanged."""

    def __init__(self, params, lr, weight_decay=0, momentum=0.9, eta=0.001,
                 weight_decay_filter=None, lars_adaptation_filter=None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        weight_decay_filter=weight_decay_filter,
                        lars_adaptation_filter=lars_adaptation_filter)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g['params']:
                dp = p.grad
                if dp is None:
                    continue
                if g['weight_decay_filter'] is None or not g['weight_decay_filter'](p):
                    dp = dp.add(p, alpha=g['weight_decay'])
                if g['lars_adaptation_filter'] is None or not g['lars_adaptation_filter'](p):
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.,
                                    torch.where(update_norm > 0,
                                                (g['eta'] * param_norm / update_norm), one), one)
                    dp = dp.mul(q)
                param_state = self.state[p]
                if 'mu' not in param_state:
                    param_state['mu'] = torch.zeros_like(p)
                mu = param_state['mu']
                mu.mul_(g['momentum']).add_(dp)
                p.add_(mu, alpha=-g['lr'])


def exclude_bias_and_norm(p):
    return p.ndim == 1


class LARC:
    """apex.parallel.LARC's step with clip=False. One addition: a group with
    'no_adapt' set is left to the wrapped SGD, with its weight decay absorbed
    like every other group's."""

    def __init__(self, optimizer, trust_coefficient=0.02, clip=True, eps=1e-8):
        self.optim = optimizer
        self.param_groups = optimizer.param_groups
        self.trust_coefficient = trust_coefficient
        self.eps = eps
        self.clip = clip

    @property
    def state(self):
        return self.optim.state

    def step(self):
        with torch.no_grad():
            weight_decays = []
            for group in self.optim.param_groups:
                # absorb weight decay control from optimizer
                weight_decay = group['weight_decay'] if 'weight_decay' in group else 0
                weight_decays.append(weight_decay)
                group['weight_decay'] = 0
                if group.get('no_adapt'):
                    continue
                for p in group['params']:
                    if p.grad is None:
                        continue
                    param_norm = torch.norm(p.data)
                    grad_norm = torch.norm(p.grad.data)
                    if param_norm != 0 and grad_norm != 0:
                        # calculate adaptive lr + weight decay
                        adaptive_lr = self.trust_coefficient * (param_norm) / (
                            grad_norm + param_norm * weight_decay + self.eps)
                        if self.clip:
                            adaptive_lr = min(adaptive_lr / group['lr'], 1)
                        p.grad.data += weight_decay * p.data
                        p.grad.data *= adaptive_lr
        self.optim.step()
        # return weight decay control to optimizer
        for i, group in enumerate(self.optim.param_groups):
            group['weight_decay'] = weight_decays[i]


def run_case(case, groups_in):
    params = [[torch.tensor(q['p'], dtype=torch.float32).reshape(q['shape'])
               for q in g['params']] for g in groups_in]
    for g in params:
        for p in g:
            p.requires_grad_(True)
    rule = case['rule']
    settings = case['groups']
    if rule == 'lars':
        def always(p):
            return True

        groups = []
        for ps, st in zip(params, settings):
            f = always if st['no_adapt'] else exclude_bias_and_norm
            groups.append({'params': ps, 'weight_decay': st['wd'],
                           'weight_decay_filter': f, 'lars_adaptation_filter': f})
        opt = LARS(groups, lr=0.0, momentum=case['momentum'], eta=case['ratio'])
        kind = 'mu'
    else:
        groups = [{'params': ps, 'weight_decay': st['wd'], 'no_adapt': st['no_adapt']}
                  for ps, st in zip(params, settings)]
        opt = torch.optim.SGD(groups, lr=0.0, momentum=case['momentum'])
        kind = 'momentum_buffer'
        if rule == 'larc':
            opt = LARC(opt, trust_coefficient=case['ratio'], clip=False, eps=case['eps'])
    steps = []
    for k, lr in enumerate(case['lrs']):
        for group, st in zip(opt.param_groups, settings):
            group['lr'] = st['fixed_lr'] if st['fixed_lr'] > 0 else lr
        for ps, g in zip(params, groups_in):
            for p, q in zip(ps, g['params']):
                grad = q['grads'][k]
                p.grad = None if grad is None else torch.tensor(
                    grad, dtype=torch.float32).reshape(q['shape'])
        opt.step()
        out = {'p': [], 'buf': []}
        for ps in params:
            out['p'].append([p.detach().reshape(-1).tolist() for p in ps])
            bufs = []
            for p in ps:
                b = opt.state[p].get(kind) if p in opt.state else None
                bufs.append(None if b is None else b.reshape(-1).tolist())
            out['buf'].append(bufs)
        steps.append(out)
    return steps


def main():
    torch.set_num_threads(1)
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    out = {'cases': [run_case(c, spec['groups']) for c in spec['cases']]}
    json.dump(out, sys.stdout)


if __name__ == '__main__':
    main()
