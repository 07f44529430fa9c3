"""A joint domain: several existing domain adapters over paired examples, diffused by one model in
which every modality has its own noise level, preconditioning and learned schedule.

The recipe lists the modalities, each by its domain and data settings, and how examples pair:

    domain: joint
    data:
      pair_by: label                  # label: an example of class k pairs with one of class k in every modality
      modalities:
        image: {domain: binary_image, data: {source: digits}}
        audio: {domain: spectrogram, data: {source: espeak, n_mels: 32, frames: 32}}
    schedule:
      image: {name: infonoise, gate_c: 0.2}
      audio: {name: infonoise}

``pair_by: file`` reads explicit pairs from ``data.pairs`` (a .npz with integer arrays ``train`` and
``val`` of shape [N, M]: indices into each modality's training / held-out split, in modality order).
Each modality keeps its own data, split and artifacts (its adapter loads them); training pairs are
drawn within the training splits and held-out pairs within the held-out splits, so a held-out pair
is held out in both modalities.

Metrics: each modality's own sample metric on the joint samples (``fd_<modality>``), the agreement
of the modalities' classifiers on joint samples (chance: 1/classes), the conditional accuracy of
each direction (``cond_<given>_to_<generated>``: samples of one modality generated from held-out
examples of another, recognised as the given example's class), and at the final evaluation a NELBO
per modality given the others clean.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..evaluation import Condition
from ..nets.joint_transformer import JOINT_RULES, joint_transformer_from_config
from ..settings import check_settings, choice, integer, number, text
from .base import Domain, DomainData
from .group import ModalityGroup


class JointDomain(Domain, ModalityGroup):
    """A domain in the registry and a group of several modalities: each an ordinary joinable domain."""

    name = "joint"
    nelbo_unit = "bits/dim"
    conditional_sampling = True
    data_defaults = {
        "modalities": {},  # name → {domain: ..., data: {...}}, in order
        "pair_by": "label",  # label | file
        "pairs": None,  # pair_by: file → a .npz with [N, M] index arrays 'train' and 'val'
        "pair_seed": 0,  # which same-class partner each example gets (independent of the training seed)
        "partners": "fixed",  # pair_by: label — fixed: each example keeps its partner; redrawn: a fresh one every step
    }
    model_defaults = {
        "width": 128,
        "layers": 4,
        "heads": 4,
        "mlp_ratio": 4,
        "dropout": 0.0,
        "patch": {},  # modality → patch side (default: the smallest that gives each modality ≤ 64 tokens)
        "clean_share": 0.4,  # examples with one modality given clean: trains the conditionals
        "drop_share": 0.1,  # examples with one modality at σ_max: trains the marginals
        "cond_loguniform": 0.0,  # of the conditional examples: generated modality's σ log-uniform, not from its schedule
    }
    data_rules = {"pair_by": choice(("label", "file")), "pairs": text(optional=True), "pair_seed": integer(0),
                  "partners": choice(("fixed", "redrawn"))}  # fmt: skip
    model_rules = {**JOINT_RULES, "clean_share": number(0, 1), "drop_share": number(0, 1), "cond_loguniform": number(0, 1)}

    def __init__(self, recipe: dict[str, Any], cache_dir: Path) -> None:
        from .registry import DOMAINS, get_domain

        super().__init__(recipe, cache_dir)
        self.diffusion_cfg = dict(recipe.get("diffusion") or {})  # the noise range and weighting every modality shares
        mods = self.data_cfg["modalities"]
        if not isinstance(mods, dict) or len(mods) < 2:
            raise UserError("data.modalities must name at least two modalities, e.g. {image: {domain: binary_image, data: {...}}, audio: {...}}")
        self.subs: dict[str, Domain] = {}
        for key, spec in mods.items():
            ok = isinstance(spec, dict) and not set(spec) - {"domain", "data"} and spec.get("domain") in DOMAINS
            if not (ok and spec["domain"] != self.name and get_domain(spec["domain"]).joinable):  # what joining asks: Domain.joinable
                joinable = [name for name in DOMAINS if name != self.name and get_domain(name).joinable]  # only to say so
                raise UserError(f"data.modalities.{key} must be {{domain: {' | '.join(joinable)}, data: {{...}}}}, got {spec!r}")
            if "." in key or not key:
                raise UserError(f"data.modalities: {key!r} is not a usable modality name")
            self.subs[key] = get_domain(spec["domain"])({"data": spec.get("data") or {}, "model": {}, "seed": self.seed}, cache_dir)
        if self.model_cfg["clean_share"] + self.model_cfg["drop_share"] > 1:
            raise UserError("model.clean_share + model.drop_share must not exceed 1")
        patch = self.model_cfg["patch"] or {}
        if not isinstance(patch, dict) or set(patch) - set(self.subs):
            raise UserError(f"model.patch must map modalities ({', '.join(self.subs)}) to patch sides, got {patch!r}")
        check_settings("model.patch", patch, {k: integer(1) for k in self.subs})
        if self.data_cfg["pair_by"] == "file" and not self.data_cfg["pairs"]:
            raise UserError("data.pair_by: file needs data.pairs=FILE.npz (integer arrays 'train' and 'val', one column per modality)")
        if self.data_cfg["pair_by"] == "file" and self.data_cfg["partners"] == "redrawn":
            raise UserError("data.partners: redrawn needs data.pair_by: label (explicit pairs from a file keep their partners)")
        keys = list(self.subs)
        self.quality_metrics = {**{f"fd_{k}": "lower" for k in keys}, "agreement": "higher",
                                **{f"cond_{a}_to_{b}": "higher" for a in keys for b in keys if a != b}}  # fmt: skip
        self.headline_metrics = {**{f"fd_{k}": f"{k} Fréchet distance" for k in keys}, "agreement": "joint agreement",
                                 **{f"cond_{a}_to_{b}": f"{a}→{b} accuracy" for a in keys for b in keys if a != b}}  # fmt: skip
        self._decoded: dict[str, tuple[int, ...]] = {}
        self._part_metrics: Optional[dict[str, Callable[[Tensor], dict[str, Any]]]] = None  # made by make_metric

    def modalities(self) -> list[str]:
        return list(self.subs)

    def modality_domain(self, key: str) -> str:
        return self.subs[key].name if key in self.subs else self.name

    def resolved_config(self) -> dict[str, dict[str, Any]]:
        mods = {k: {"domain": sub.name, "data": dict(sub.data_cfg)} for k, sub in self.subs.items()}
        return {"data": {**self.data_cfg, "modalities": mods}, "model": dict(self.model_cfg)}

    # ---- data -------------------------------------------------------------------------------------
    def load(self, run_dir: Optional[Path] = None) -> DomainData:
        parts = {k: sub.load(run_dir) for k, sub in self.subs.items()}
        keys = list(parts)
        if self.data_cfg["pair_by"] == "file":
            train, val = self._pairs_from_file(parts)
        else:
            for k, d in parts.items():
                if d.train_labels is None or d.val_labels is None:
                    raise UserError(f"data.pair_by: label needs labels in every modality; {k} ({self.subs[k].name}) has none")
            seed = int(self.data_cfg["pair_seed"])
            train = pair_by_label([parts[k].train_labels.numpy() for k in keys], seed)
            val = pair_by_label([parts[k].val_labels.numpy() for k in keys], seed + 1)
        offsets = np.array([parts[k].train.shape[0] for k in keys])
        first = parts[keys[0]]
        tr, va = torch.from_numpy(train), torch.from_numpy(val)
        return DomainData(
            train=tr, val=va + torch.from_numpy(offsets)[None],  # held-out rows sit after the training rows of each table
            dataset="+".join(f"{k}:{parts[k].dataset}" for k in keys),
            train_labels=first.train_labels[tr[:, 0]] if first.train_labels is not None else None,  # the pair's class
            val_labels=first.val_labels[va[:, 0]] if first.val_labels is not None else None,
            num_classes=first.num_classes,
            info={"parts": parts, "tables": {k: torch.cat([parts[k].train, parts[k].val]).float() for k in keys},
                  "val_pairs": torch.from_numpy(val)},
        )  # fmt: skip

    def _pairs_from_file(self, parts: dict[str, DomainData]) -> tuple[np.ndarray, np.ndarray]:
        path = Path(str(self.data_cfg["pairs"]))
        try:
            arrays = np.load(path, allow_pickle=False)
            train, val = np.asarray(arrays["train"], np.int64), np.asarray(arrays["val"], np.int64)
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"data.pairs {path}: cannot read integer arrays 'train' and 'val' ({exc})") from None
        for name, arr, split in (("train", train, "train"), ("val", val, "val")):
            if arr.ndim != 2 or arr.shape[1] != len(parts) or arr.shape[0] < 1:
                raise UserError(f"data.pairs {path}: '{name}' must have shape [N, {len(parts)}] (one column per modality)")
            for m, (k, d) in enumerate(parts.items()):
                n = getattr(d, split).shape[0]
                if arr[:, m].min() < 0 or arr[:, m].max() >= n:
                    raise UserError(f"data.pairs {path}: '{name}' column {m} ({k}) indexes outside its {n} {split} examples")
        return train, val

    def save_artifacts(self, data: DomainData, run_dir: Path) -> None:
        for k, sub in self.subs.items():
            sub.save_artifacts(data.info["parts"][k], run_dir)

    def modality_sigma_data(self, data: DomainData) -> dict[str, float]:
        return {k: sub.measure_sigma_data(data.info["parts"][k]) for k, sub in self.subs.items()}

    # ---- model ---------------------------------------------------------------------------------------
    def modality_model(self, data: DomainData, sigma_data: dict[str, float]) -> Any:
        from ..diffusion.joint import JointDiffusion

        parts = data.info["parts"]
        shapes = {k: tuple(parts[k].train.shape[1:]) for k in self.subs}
        if any(len(s) != 3 for s in shapes.values()):
            raise UserError(f"a joint model composes 2-D grids [C, H, W]; got {shapes}")
        patch = {k: int((self.model_cfg["patch"] or {}).get(k) or default_patch(shapes[k])) for k in self.subs}
        backbone = joint_transformer_from_config(self.model_cfg, shapes, patch)
        decoders, floors, recon = {}, {}, {}
        for k, sub in self.subs.items():
            single = sub.build_model(parts[k], sigma_data[k])  # its decoder and reconstruction term
            decoders[k] = single.decode
            recon[k] = single.recon
            floors[k] = float(sub.nelbo_sigma_min or 0.0)
            with torch.no_grad():
                self._decoded[k] = tuple(single.decode(parts[k].train[:1].float()).shape[1:])
        d = self.diffusion_cfg
        redrawn = self.data_cfg["partners"] == "redrawn"
        return JointDiffusion(backbone, shapes, sigma_data, recon, floors, decoders, data.info["tables"], weighting=d["weighting"],
                              sigma_min=float(d["sigma_min"]), sigma_max=float(d["sigma_max"]),
                              clean_share=float(self.model_cfg["clean_share"]), drop_share=float(self.model_cfg["drop_share"]),
                              cond_loguniform=float(self.model_cfg["cond_loguniform"]),
                              partner_labels={k: parts[k].train_labels for k in self.subs} if redrawn else None)  # fmt: skip

    build_model = modality_model  # type: ignore[assignment]  # as a registered domain, its model is the group's

    def example_shape(self, data: DomainData) -> tuple[int, ...]:
        parts = data.info["parts"]
        return (sum(math.prod(parts[k].train.shape[1:]) for k in self.subs),)

    # ---- samples ---------------------------------------------------------------------------------------
    def decoded_parts(self, decoded: Tensor) -> dict[str, Tensor]:
        sizes = [math.prod(self._decoded[k]) for k in self.subs]
        return {k: part.reshape(decoded.shape[0], *self._decoded[k]) for k, part in zip(self.subs, decoded.split(sizes, dim=1))}

    def write_samples(self, decoded: Tensor, out_dir: Path, tag: str) -> list[Path]:
        files: list[Path] = []
        for k, part in self.decoded_parts(decoded).items():
            files += self.subs[k].write_samples(part, Path(out_dir) / k, tag)
        return files

    def make_metric(self, data: DomainData) -> Callable[[Tensor], dict[str, Any]]:
        parts = data.info["parts"]
        metrics = {k: sub.make_metric(parts[k]) for k, sub in self.subs.items()}
        self._part_metrics = metrics  # also scores conditional samples (model_metrics)

        def metric(decoded: Tensor) -> dict[str, Any]:
            split = self.decoded_parts(decoded)
            own = {k: metrics[k](split[k]) for k in self.subs}
            labels = [self.subs[k].classify(split[k]) for k in self.subs]
            agree = float(np.mean(np.all([lab == labels[0] for lab in labels[1:]], axis=0)))
            out: dict[str, Any] = {f"fd_{k}": own[k][self.subs[k].distance_metric] for k in self.subs}
            out["agreement"] = agree
            out["per_modality"] = {k: {m: v for m, v in own[k].items() if m != "classifier"} for k in self.subs}
            out["notes"] = [f"{k}: {note}" for k in self.subs for note in own[k].get("notes", [])] + [
                f"joint agreement: the modalities' classifiers give {100 * agree:.1f} % of joint samples the same class "
                f"(chance {100 / max(data.num_classes, 1):.0f} %)"
            ]
            return out

        return metric

    def model_metrics(self, model: Any, sample: Callable[[int, Condition], Tensor], data: DomainData, n: int,
                      final: bool = False, guidance: float = 1.0) -> dict[str, Any]:  # fmt: skip
        """Conditional accuracy both ways: samples of each modality generated from held-out examples
        of another (with classifier-free guidance ``guidance``; see :class:`JointCondition`), and the
        Fréchet distance of those samples (``fd_<generated>_given_<given>``: what guidance costs)."""
        val_pairs = data.info["val_pairs"][:n]
        parts = data.info["parts"]
        labels = data.val_labels[: val_pairs.shape[0]].numpy()
        if self._part_metrics is None:
            self.make_metric(data)
        out: dict[str, Any] = {}
        for a in self.subs:
            given = {a: parts[a].val[val_pairs[:, list(self.subs).index(a)]].float()}
            decoded = self.decoded_parts(sample(val_pairs.shape[0], JointCondition(model, given, guidance=guidance)))
            for b in self.subs:
                if b != a:
                    out[f"cond_{a}_to_{b}"] = float((self.subs[b].classify(decoded[b]) == labels).mean())
                    out[f"fd_{b}_given_{a}"] = float(self._part_metrics[b](decoded[b])[self.subs[b].distance_metric])
        return out

    @torch.no_grad()
    def extra_nelbo(self, model: Any, data: DomainData, settings: Any, device: Any) -> dict[str, Any]:
        """Each modality's NELBO given the others clean, in bits per dimension of that modality."""
        from ..diffusion.likelihood import fixed_noise
        from ..evaluation import validation_subset

        raw, ids = validation_subset(data.val, settings)
        totals = {k: 0.0 for k in self.subs}
        for i in range(0, raw.shape[0], settings.batch):
            x = model.encode(raw[i : i + settings.batch].to(device))
            noise = fixed_noise(ids[i : i + settings.batch], tuple(x.shape[1:]), settings.nodes + 1, settings.seed).to(x)
            for k in self.subs:
                totals[k] += float(model.nelbo(x, noise, settings.sigma_min, settings.sigma_max, only=k).sum())
        dims = {k: math.prod(data.info["parts"][k].train.shape[1:]) for k in self.subs}
        return {f"nelbo_{k}_given_rest": totals[k] / raw.shape[0] / (math.log(2) * dims[k]) for k in self.subs}

    def condition(self, model: Any, given: dict[str, str], only: Optional[str], n: int, data: DomainData,
                  guidance: float = 1.0) -> Condition:  # fmt: skip
        """``multidiff sample --given MOD=heldout|FILE`` (those modalities fixed, the rest generated,
        with classifier-free guidance ``guidance``) or ``--only MOD`` (MOD generated alone, the others
        held at σ_max: its marginal)."""
        for key in [*given, *([only] if only else [])]:
            if key not in self.subs:
                raise UserError(f"--given/--only: unknown modality {key!r}; this run has {', '.join(self.subs)}")
        if only:
            return JointCondition(model, {}, marginal=[k for k in self.subs if k != only])
        fixed = {}
        for key, src in given.items():
            sub, part = self.subs[key], data.info["parts"][key]
            if src == "heldout":
                x = part.val[:n].float()
            else:
                x = sub.load_given(Path(src), part)
            if x.shape[0] < n:
                raise UserError(f"--given {key}={src}: {x.shape[0]} examples for --n {n}")
            fixed[key] = x[:n]
        return JointCondition(model, fixed, guidance=guidance)


class JointCondition(Condition):
    """Given modalities fixed clean (conditional sampling), or ``marginal`` ones held at σ_max.

    ``guidance`` w is classifier-free guidance against the model's own marginal: the generated
    modalities' x0 estimate is D_marg + w·(D_cond − D_marg), where D_marg sees the given modalities
    as pure noise at σ_max (the model learned that case from its dropped examples). w = 1 is the plain
    conditional (one model call per step), w = 0 the marginal; w > 1 strengthens what the given
    modalities say, at two model calls per step."""

    def __init__(self, model: Any, given: dict[str, Tensor], marginal: Optional[list[str]] = None, guidance: float = 1.0) -> None:
        self.model, self.given, self.marginal, self.guidance = model, given, list(marginal or []), float(guidance)

    def apply(self, x: Tensor, denoiser: Callable[[Tensor, Tensor], Tensor], start: int, end: int) -> tuple[Tensor, Callable[[Tensor, Tensor], Tensor]]:
        model = self.model
        parts = model.split(x)
        unseen = {k: parts[k] for k in self.given}  # their initial σ_max noise: what the marginal call sees instead
        for k, g in self.given.items():
            parts[k] = g[start:end].to(x)
        x = model.join(parts)
        held = {**{k: model.sigma_min for k in self.given}, **{k: model.sigma_max for k in self.marginal}}
        dropped = {**held, **{k: model.sigma_max for k in self.given}}
        guided = self.guidance != 1.0 and bool(self.given)

        def levels(sig: Tensor, fixed: dict[str, float]) -> Tensor:
            return torch.stack([torch.full_like(sig, fixed[k]) if k in fixed else sig for k in model.keys], dim=1)

        def fixed(z: Tensor, sigma: Tensor) -> Tensor:
            sig = sigma.float().reshape(-1).expand(z.shape[0]) if sigma.numel() in (1, z.shape[0]) else sigma
            zs = model.split(z)
            out = model.split(model.denoise(z, levels(sig, held)))
            if guided:
                marg = model.split(model.denoise(model.join({**zs, **unseen}), levels(sig, dropped)))
                out = {k: marg[k] + self.guidance * (out[k] - marg[k]) for k in model.keys}
            for k in held:  # their x0 estimate is their value: the sampler leaves them where they are
                out[k] = zs[k]
            return model.join(out)

        return x, fixed


def default_patch(shape: tuple[int, ...]) -> int:
    """The smallest patch side dividing the grid that gives at most 64 tokens."""
    _, h, w = shape
    for p in range(1, min(h, w) + 1):
        if h % p == 0 and w % p == 0 and (h // p) * (w // p) <= 64:
            return p
    return math.gcd(h, w)


def pair_by_label(labels: list[np.ndarray], seed: int) -> np.ndarray:
    """[N, M] indices pairing examples of equal class across M modalities. N is the largest
    modality's size: each of its examples gets, in every other modality, the next same-class example
    of a seeded cycle through that class, so every example of the smaller modalities is used
    equally often."""
    rng = np.random.default_rng(seed)
    lead = int(np.argmax([len(lab) for lab in labels]))
    classes = np.unique(labels[lead])
    out = np.zeros((len(labels[lead]), len(labels)), dtype=np.int64)
    out[:, lead] = np.arange(len(labels[lead]))
    for m, lab in enumerate(labels):
        if m == lead:
            continue
        missing = [int(c) for c in classes if not (lab == c).any()]
        if missing:
            raise UserError(f"data.pair_by: label — class {missing[0]} has no example in modality {m + 1}; pairs cannot be formed")
        for c in classes:
            rows = np.nonzero(labels[lead] == c)[0]
            pool = rng.permutation(np.nonzero(lab == c)[0])
            out[rows, m] = pool[np.arange(len(rows)) % len(pool)]
    return out
