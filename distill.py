"""
Knowledge distillation with a temperature and a hardness (the paper's third guideline).

Hinton, Vinyals & Dean (2015); used for pruning by oBERT (Kurtic et al. 2022, section 4) and
shown by Kurtic, Hoefler & Alistarh (2024, section 4) to need a *high* temperature: T = 5.5
with hardness h = 1.0 (the student learns from the teacher alone, no hard labels).

    kd   = T^2 * KL( softmax(z_t / T) || softmax(z_s / T) )       summed over classes,
                                                                 averaged over all else
    loss = (1 - h) * task_loss + h * kd

Why T matters: a fine-tuned teacher is confident, so at T = 1 its softmax is nearly one-hot and
carries almost nothing beyond the hard label. For teacher logits z_t = (8, 2, 0):

    T = 1.0   softmax(z_t / T) = (0.9972, 0.0025, 0.0003)   ~ the label again
    T = 2.0                    = (0.9362, 0.0466, 0.0171)
    T = 5.5                    = (0.6372, 0.2140, 0.1488)   how the teacher ranks the wrong answers

The T^2 factor keeps the gradient's size independent of T (the soft targets' gradients scale
as 1/T^2). `python distill.py` prints these numbers. train.py calls `kd_loss` on the student's and the (eval-mode, no-grad) teacher's
logits of the same batch and mixes it with the task loss through `combine`.
"""
import torch
import torch.nn.functional as F

TEMPERATURE = 5.5   # the paper's default
HARDNESS = 1.0      # the paper's default: distillation loss only


def kd_loss(student_logits, teacher_logits, temperature: float = TEMPERATURE, mask=None) -> torch.Tensor:
    """T^2 * KL(p_t || p_s) with p = softmax(z / T) over the last dimension.

    student_logits, teacher_logits: (..., K) tensors, e.g. (B, K) for classification or (B, C)
      for multiple choice; or (start, end) tuples of (B, T) for span QA, whose two losses are
      averaged.
    mask: optional (..., K) bool, True for classes that exist (span QA: every real token of the
      sequence, question and special tokens included; only padding is excluded, as train.py passes
      the attention mask);
      the others are excluded from both softmaxes and from the sum.
    """
    if isinstance(student_logits, (tuple, list)):
        losses = [kd_loss(s, t, temperature, mask) for s, t in zip(student_logits, teacher_logits)]
        return sum(losses) / len(losses)
    T = temperature
    z_s, z_t = student_logits.float() / T, teacher_logits.float() / T   # fp32 even under autocast
    if mask is not None:
        z_s, z_t = z_s.masked_fill(~mask, float("-inf")), z_t.masked_fill(~mask, float("-inf"))
    log_p_s = F.log_softmax(z_s, dim=-1)                                # (..., K)
    log_p_t = F.log_softmax(z_t, dim=-1)                                # (..., K)
    log_ratio = log_p_t - log_p_s                                       # log(p_t / p_s)
    if mask is not None:
        log_ratio = log_ratio.masked_fill(~mask, 0.0)                   # (-inf) - (-inf) -> 0, not nan
    kl = log_p_t.exp() * log_ratio                                      # p_t * log(p_t / p_s)
    return T * T * kl.sum(dim=-1).mean()                                # sum over K, mean over the rest


def combine(task_loss, kd, hardness: float = HARDNESS):
    """(1 - h) * task + h * kd. With no teacher (kd None) the task loss alone."""
    if kd is None or hardness == 0.0:
        return task_loss
    if hardness == 1.0:
        return kd
    return (1.0 - hardness) * task_loss + hardness * kd


def worked_example():
    """The numbers of the docstring, computed: what the student sees at each temperature."""
    z_t = torch.tensor([8.0, 2.0, 0.0])                   # a confident teacher's logits
    z_s = torch.tensor([4.0, 3.0, 1.0])                   # a student that ranks the same way, less surely
    print("teacher logits z_t = (8, 2, 0); student logits z_s = (4, 3, 1)")
    print(f"{'T':>5}  {'softmax(z_t / T)':>26}  {'kd = T^2 KL(p_t || p_s)':>24}")
    for T in (1.0, 2.0, TEMPERATURE):
        p_t = F.softmax(z_t / T, dim=-1)
        kd = kd_loss(z_s[None], z_t[None], T)
        print(f"{T:5.1f}  ({', '.join(f'{p:.4f}' for p in p_t)})  {kd.item():24.4f}")
    task = F.cross_entropy(z_s[None], torch.tensor([0]))
    print(f"combine(task = {task.item():.4f}, kd at T = {TEMPERATURE}, h = {HARDNESS}) = "
          f"{combine(task, kd_loss(z_s[None], z_t[None]), HARDNESS).item():.4f}  (h = 1: the teacher alone)")


if __name__ == "__main__":
    worked_example()
