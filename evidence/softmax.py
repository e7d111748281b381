"""The teacher's softmax at T = 1, 2 and 5.5 on real dev sentences: the data of the paper's figure
for its third guideline (distil at a high temperature), made from our own teacher.

distill.py divides the logits z by T before the softmax, p_T = softmax(z / T). A fine-tuned
teacher is confident: at T = 1 most of its mass sits on one class, so the student learns little
more from p_1 than from the hard label. At T = 5.5 the same logits give a softer p_T whose
smaller entries (how wrong the other class is) carry the "dark knowledge".

Writes one small JSON file: for the first --examples dev sentences their text, label, logits and
p_T for each T, and over the whole dev set the mean probability of the teacher's top class and
the mean entropy at each T, through files.py's rule (it replaces only a record of its own).
evidence/figures.py draws it; evidence/runs.py runs this.

    python evidence/softmax.py --model runs/evidence/teacher-s0/model [--data-dir ../shared/data] --out F.json
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import data                      # noqa: E402
import files                     # noqa: E402
import model as modeling         # noqa: E402

TEMPERATURES = (1.0, 2.0, 5.5)


def dev_logits(folder: str, data_dir: str, task_name: str) -> tuple[list[dict], torch.Tensor]:
    """The task's dev examples and the teacher's logits on them, (N, C), dropout off."""
    task = data.TASKS[task_name]
    tok = data.load_tokenizer(folder)
    examples = data.load_split(task, "validation", data_dir)
    features = data.encode(task, examples, tok)
    net = modeling.from_pretrained(folder, head=task.kind, num_labels=task.num_labels).eval()
    logits = []
    with torch.no_grad():
        for batch in data.make_loader(features, 64, False, 0, data.pad_id(tok)):
            logits.append(net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
    return examples, torch.cat(logits)                       # (N, C)


def main():
    p = argparse.ArgumentParser(description="The teacher's softmax at several temperatures on real dev data.")
    p.add_argument("--model", required=True, help="the fine-tuned teacher's folder")
    p.add_argument("--data-dir", help="folder with the task's released files (default: the Hugging Face hub)")
    p.add_argument("--task", default="sst2", help="the task (default sst2)")
    p.add_argument("--examples", type=int, default=6, help="dev examples to keep whole (default 6)")
    p.add_argument("--out", required=True, help="the JSON file to write")
    args = p.parse_args()
    with files.command("softmax.py", data.DataError, modeling.CheckpointError):
        if args.task not in data.TASKS:
            raise files.Refused(f"--task {args.task} is not a task here; pass one of {', '.join(data.TASKS)}")
        files.check_target(args.out, files.SOFTMAX)          # before the work: its result is never lost
        write_softmax(args)


def write_softmax(args):
    examples, z = dev_logits(args.model, args.data_dir, args.task)
    record = {"model": args.model, "task": args.task, "temperatures": list(TEMPERATURES), "examples": [],
              "dev_size": len(examples), "dev_mean_top_probability": {}, "dev_mean_entropy_nats": {}}
    for T in TEMPERATURES:
        p_T = torch.softmax(z / T, dim=-1)                   # (N, C), distill.py's p_T
        entropy = -(p_T * p_T.clamp_min(1e-12).log()).sum(-1)
        record["dev_mean_top_probability"][str(T)] = round(p_T.max(-1).values.mean().item(), 4)
        record["dev_mean_entropy_nats"][str(T)] = round(entropy.mean().item(), 4)
    for e, zi in zip(examples[: args.examples], z[: args.examples]):
        record["examples"].append({"text": e["first"], "label": e["label"], "logits": [round(v, 4) for v in zi.tolist()],
                                   "p": {str(T): [round(v, 4) for v in torch.softmax(zi / T, -1).tolist()]
                                         for T in TEMPERATURES}})
    files.write_result(args.out, json.dumps(record, indent=1) + "\n", files.SOFTMAX)
    print(json.dumps(record["dev_mean_top_probability"]), flush=True)


if __name__ == "__main__":
    main()
