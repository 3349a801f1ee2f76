"""The trajectory probe: a short grouped-Newton run, then a calibrated global scale.

gn-probe/0.7 (issue 11, fifth round) changed the λ₁ contest in two ways. With heavy-ball
momentum each calibration run is twice as long (``momentum_calibration_factor``: 80 steps instead of
40), and for every optimizer λ₁ is the smallest candidate whose loss drop is at least 95 % of
the largest drop (``calibration_tolerance``) rather than the lowest loss outright. The worst
cells were momentum's, and their contests could not see what went wrong: on the deep MLP the
40-step runs moved the loss by about 1 % (0.3 won on noise, or lost to a candidate that then
learned nothing), and a large λ₁'s instability under momentum builds over more steps than 40.
Over 80 steps the deep MLP's candidates separate: on one seed from init no 40-step run lowered
the loss at all (λ₁ fell back to the smallest candidate, and training learned nothing: regret
1.0); over 80 steps the largest lowered it by 5 % and training beat the grid (−0.30). A longer
contest alone let the small tabular tasks (breast_cancer, wine) pick the largest λ₁ on near-ties
of the saturated training loss (drops of 0.643, 0.644 and 0.647), and those rates overfit
(breast_cancer from init: 0.014 → 0.213); the tolerance gives a near-tie to the smaller
candidate. The two need each other: on the momentum cells of ``make bench``'s seeds 0–2 (9 tasks
× 2 starts × 3 seeds, 18 cells; "behind" = cells more than 0.05 regret behind gn-probe/0.6's
single-group rate; FB = mean selection passes):

=====================================  ======  ======  =====  =====  =========  ======  ===
momentum cells                         median  mean    worst  >0.15  collapsed  behind  FB
=====================================  ======  ======  =====  =====  =========  ======  ===
gn-probe/0.6                           0.014   0.065   0.508  4      5          1       256
80-step contest                        0.006   0.019   0.275  2      4          3       376
80-step contest, extension too         0.019   0.019   0.275  2      4          3       390
tolerance 5 % (40 steps)               0.014   0.067   0.510  4      5          1       256
gn-probe/0.7: 80 steps, tolerance 5 %  0.010   −0.006  0.185  1      3          0       376
80 steps, tolerance 10 %               0.008   0.001   0.297  1      3          1       376
=====================================  ======  ======  =====  =====  =========  ======  ===

Confirmed on seeds it was not chosen on (``--first-seed 3 --seeds 2``, momentum, the 8 tasks
without the GPT, 16 cells): median 0.014 → 0.012, mean 0.027 → −0.026, worst 0.461 → 0.225,
cells behind 3 → 0, collapsed runs 1 → 1 (wine-mlp warm 0.461 → 0.140, breast_cancer warm 0.089
→ 0.018, the deep MLP from init −0.004 → −0.372; the digits CNN from init 0.006 → 0.032 the one
cell worse by more than 0.01). On SGD and AdamW (seeds 0–2, 36 cells) the tolerance alone is a
wash: median −0.002 and worst 0.141 either way, 3 cells better by more than 0.01 (breast_cancer
AdamW from init 0.030 → −0.005 and warm 0.079 → 0.026, wine-mlp AdamW warm 0.063 → 0.012), 4
worse (MNIST-1D AdamW from init −0.062 → −0.018, wine-resmlp AdamW warm 0.048 → 0.068,
wine-resmlp SGD init 0.025 → 0.036, the deep MLP AdamW warm −0.011 → 0.001); it applies to every
optimizer so that one rule reads the contest (on seeds 3–4, SGD and AdamW, 32 cells: median
0.015 → 0.012, mean 0.013 → 0.005, 4 cells better, 1 worse). The extension past 0.3 with heavy
ball too, on top of both (momentum, seeds 0–2): worst 0.185 → 0.155 but the MNIST-1D CNN from
init −0.064 → 0.045 and mean and median unchanged; not kept. Nor is the momentum margin made
redundant by the longer contest: without it (momentum, seeds 0–2) median 0.010 → 0.023, worst
0.185 → 0.375, collapsed runs 3 → 5; nor is it needed only on a plateau (kept only where the
contest's best run lowered the loss by less than 10 % of its start, read off the same runs: 23
of its 26 runs lose it, worst 0.185 → 0.375, collapsed 3 → 4, the GPT's cells better). The cost
is 120 more passes with momentum (mean 256 → 376 FB there; the GPT's momentum cells 482, up to
580 where its trajectory was run again). All figures of this round are from an AVX-512 Xeon; the
README's quality section has the full table under gn-probe/0.7 (all 54 cells against
gn-probe/0.6: median 0.001 → 0.001, mean −0.011 → −0.035, worst 0.508 → 0.185, cells above 0.15
4 → 1, collapsed runs 7 → 5, mean selection FB 263 → 303).

Tried on top of gn-probe/0.7 and not kept (issue 11, sixth round): keeping the bounds where
the single-group η is not positive. The bounds [η₁/b, b·η₁] need η₁ > 0; at an evaluation where
the curvature along the whole step is negative they lapse and only relu applies
(``unanchored="relu"``, the default). That is common on a plateau: on the 8-layer ReLU MLP at
init 2 to 7 of the 10 evaluations of a trajectory have η₁ ≤ 0, and one layer's rate then reaches
10⁴–10⁵ times another's (SGD from init, seed 1: the first layer 432, the others 0.02–1.4). Two
ways to keep them (variants ``hold``: the rates stay as they were; ``last``: bounds around the
latest positive η₁), against gn-probe/0.7 on the same jobs (seeds 0–2; "behind" as above):

=================================================  ======  ======  =====  =====  =========  ======
cells                                              median  mean    worst  >0.15  collapsed  behind
=================================================  ======  ======  =====  =====  =========  ======
deep MLP and both wine tasks (18): gn-probe/0.7    0.012   −0.102  0.185  1      5          2
… ``hold``                                         0.009   −0.030  0.335  2      5          2
… ``last``                                         0.029   0.042   0.368  3      6          2
41 cells (see below): gn-probe/0.7                 0.010   −0.043  0.185  1      5          2
… ``hold``                                         0.006   −0.011  0.335  3      6          2
=================================================  ======  ======  =====  =====  =========  ======

(The 41 cells: all but the digits transformer's six, the GPT's three from a warm checkpoint and
four of the MNIST-1D CNN's, which the ``hold`` run did not reach before it was stopped.) The
deep MLP's wide rates are what beat the grid there, and bounding them gives that back (SGD from
init −1.0 → −0.33 with ``hold``, 0.17 with ``last``; with momentum from a warm checkpoint
``hold`` helped, −0.10 → −0.21, and ``last`` did not, 0.37) without removing its collapsed runs;
elsewhere ``hold`` cost the wine MLP with momentum from a warm checkpoint 0.084 → 0.335 and the
MNIST-1D CNN with SGD from init −0.124 → 0.163 (with a collapse). ``last`` helped the wine
residual MLP a little (warm momentum 0.185 → 0.175, warm SGD 0.141 → 0.110). The lapse stays;
``unanchored`` keeps both rules as options.

What the deep MLP's collapsed runs are, seen step by step: with momentum two learn (training
loss 2.3 → 1.0 and 1.3 by step 200) and then diverge (non-finite between steps 220 and 240)
once training has left the plateau the probe measured; rescaling the recommended rates
afterwards (by 0.5 or 0.25, or capping each at 10× the single-group rate or at 3× or 10× the
median rate) rescued some seeds and stalled others at chance level (capped at 10× the median
rate, one still diverged), with no rescaling right for all six momentum runs. Of its two SGD
"collapses", one died late (warm, seed 2: a jump to 3.3 near step 240, then chance level); the
other (from init, seed 0) ends just above the grid's own best point, which ends at chance level
on that seed too, after reaching a held-out loss better than every grid point's.

Nor did a second probe during training (issue 11, seventh round), which those collapses seemed
to ask for: the benchmark's ``reprobe`` variant trains at the probe's rates and probes again
(``Reprobe`` with a ``LocalProbe``) after as many steps as the first probe took (its
trajectory and one calibration run, both from the checkpoint: ``steps + calibration_steps``,
80; 120 with heavy-ball momentum), then goes on at the new rates;
both probes count as selection compute. Against gn-probe/0.7 on the same jobs:

=============================================  ======  ======  =====  =====  =========  ======  ===
cells                                          median  mean    worst  >0.15  collapsed  behind  FB
=============================================  ======  ======  =====  =====  =========  ======  ===
all 54, seeds 0–2: gn-probe/0.7                0.001   −0.035  0.185  1      5          2       303
… re-probed                                    0.015   −0.023  0.308  1      1          0       598
momentum, seeds 0–2 (18): gn-probe/0.7         0.010   −0.006  0.185  1      3          1       376
… re-probed                                    0.010   −0.036  0.135  0      1          0       745
momentum, seeds 3–4 (16): gn-probe/0.7         0.012   −0.026  0.225  1      1          0       358
… re-probed                                    0.016   −0.014  0.213  3      0          0       716
=============================================  ======  ======  =====  =====  =========  ======  ===

The re-probe reads the curvature where training has got to: the deep MLP's rates, read on its
plateau, came out smaller in 5 of its 6 momentum runs (1.5–22×) and none collapsed (momentum warm
−0.100 → −0.434); wine gained too (wine-resmlp warm momentum 0.185 → 0.101). But where the first
probe's large rates were right to stay large its smaller ones slowed training: every MNIST-1D
cell (SGD warm −0.013 → 0.308), the digits CNN and the GPT with SGD (0.050 → 0.135; warm
−0.002 → 0.084); 12 cells better by more than 0.01, 20 worse, at twice the compute. With
momentum alone it met the worst-cell target on seeds 0–2 but not on seeds 3–4. Nor did
re-probing only where the momentum margin's note fired, chosen afterwards on seeds 0–2 (all 54
cells: worst 0.141, collapsed runs 2, mean selection 367 passes): on seeds 3–4 (momentum, 16
cells) cells above 0.15 went from 1 to 3. Not kept (:func:`_plateau_note` has what it did to
the runs that note marks).

Nor did a schedule (issue 11, eighth round), the issue's last hypothesis: most training runs
under warm-up and decay, and a decaying rate cannot blow up late. The benchmark's ``--schedule
cosine`` trains every method under a linear warm-up over 5 % of the steps and a cosine decay to
0 (``schedules.warmup_cosine``), its rate the peak; schedule-free runs its own warm-up instead,
Prodigy with ``safeguard_warmup``. The grid and the regret are re-read under the same schedule.
Seeds 0–2, 54 cells:

=============================================  ======  ======  =====  =====  =========  ======
rule                                           median  mean    worst  >0.15  collapsed  behind
=============================================  ======  ======  =====  =====  =========  ======
constant rates: gn-probe/0.7                   0.001   −0.035  0.185  1      5          2
cosine, gn-probe/0.7's rates as the peak       0.011   −0.024  0.260  4      0          0
… the peak 1.5× those rates                    0.008   −0.019  0.408  4      1          2
… 2×                                           0.010   0.022   0.609  7      7          4
… 3×                                           0.036   0.108   1.000  13     18         9
… λ₁ contest run under the schedule            0.009   0.020   0.584  6      6          3
=============================================  ======  ======  =====  =====  =========  ======

(``calibration_schedule="cosine"``: each 40- or 80-step calibration run warms up and decays over
its own length, which favours larger λ₁; variant ``cal-cosine``. "behind": cells more than 0.05
regret behind the unscaled single-group rate, both under the schedule; the single-group rate
does worse under it too, median 0.062 → 0.137.) Under the schedule no run of the probe's rates
collapsed by the benchmark's measure (judged against the constant-rate grid instead, one: a
deep-MLP run with momentum that stalled at chance level where the scheduled grid stalls too) and
none fell behind the single-group rate; the worst cells are where its rates are small for a
decaying run (the GPT with momentum from a warm checkpoint 0.247, the MNIST-1D CNN with SGD
0.225 warm), and wine-resmlp warm momentum (0.260; the grid chosen on other seeds: 0.309).
Larger peaks fix those and break others (the 3× peak collapses 18 runs: the deep MLP, the
MNIST-1D CNN, the GPT, wine-resmlp, the digits CNN and transformer). But the schedule costs
speed: against the same rates held constant, the best held-out loss is higher in 124 of 162 runs
(median +7.8 %); the grid's own best point gains in some runs and loses in others (69 better, 87
worse). On seeds 3–4 (the 8 tasks without the GPT, 96 runs) the schedule again made collapses
rarer (2 → 1, a deep-MLP run that stalled at chance level; 1 against the constant-rate grid too)
and cost speed (best held-out loss higher in 67 runs, median +6.1 %) and the worst cells (0.278
→ 0.373; cells above 0.15: 3 → 7). Not a default: constant rates stay what the probe recommends,
and the schedule is advice for runs whose late collapse costs more than speed (the plateau
note's, with :func:`lrprobe.warmup_cosine`).

gn-probe/0.6 (issue 11, fourth round) changed one thing: when the λ₁ contest is won by its
largest candidate while the loss still fell steeply there, one more candidate past it is run
(0.9 after {0.03, 0.1, 0.3}; :func:`calibrate_scale`, ``extend_edge``), and wins if it scores
lower; not with heavy-ball momentum (``extend_momentum``, see below). "Steeply": the winner's
40-step loss drop is at least 1.3× the next-largest candidate's and at least 10 % of the loss
its run started from. The contest used to stop at its grid's edge, and the edge won 124 of
162 contests (17 of 27 with momentum from a warm checkpoint, where the rates of the worst
cells were too small, not too large). For every optimizer, the extension ran in 68 of 162
contests and won 52. On ``make bench`` (9 tasks × 2 starts × 3 optimizers × 3
seeds, 54 cells; gn-probe/0.5 as a variant on the same runs; the variants ``edge`` and
``edge-1.3`` on an earlier run of the same jobs):

===============================================  ======  ======  =====  =====  =========  =====
rule                                             median  mean    worst  >0.15  collapsed  FB
===============================================  ======  ======  =====  =====  =========  =====
gn-probe/0.5: the contest stops at 0.3           0.009   0.006   0.570  4      9          251
extend whenever the largest candidate wins       0.009   0.019   0.670  5      13         281
extend when its drop is ≥ 1.3× the next one's    0.004   0.015   0.570  5      13         270
… and ≥ 10 % of its start                        0.002   −0.005  0.570  4      9          268
gn-probe/0.6: … but not with momentum (kept)     0.002   −0.004  0.570  4      9          263
===============================================  ======  ======  =====  =====  =========  =====

Confirmed on seeds it was not chosen on (``--first-seed 3 --seeds 2``, the 8 tasks without the
GPT, 48 cells), against gn-probe/0.5: with the extension for every optimizer, median 0.025 →
0.024, mean 0.043 → 0.040, but collapsed runs 3 → 5, both new ones with momentum (the
transformer from init, the MNIST-1D CNN warm), and momentum's mean 0.041 → 0.044. Without it
for heavy ball (kept): median 0.024, mean 0.039, cells above 0.15 8 → 7, collapsed runs 3 → 3.
With momentum the instability that a larger λ₁ breeds builds over more steps than the 40-step
contest sees (the reason for the momentum margin of gn-probe/0.4), so the extension is off
there; that gives back its two best momentum cells on ``make bench`` (the GPT warm 0.150 →
0.016 and the transformer warm 0.002 → −0.057 with it) and its two worst.

The figures below are those of the extension for every optimizer, on seeds 0–2.

Against gn-probe/0.5 cell by cell, 14 cells better by more than 0.01 regret (the GPT from a
warm checkpoint with momentum 0.150 → 0.016 and with SGD 0.118 → −0.002; the digits CNN with
SGD warm 0.094 → 0.030; the transformer with momentum warm 0.002 → −0.057; the MNIST-1D CNN
with AdamW from init 0.005 → −0.073) and 2 worse (the deep MLP with momentum from init −0.10 →
0.12, the transformer with momentum from init −0.055 → −0.040). The plateau test kept the
extension from adding collapsed runs (9, in the same cells, as under gn-probe/0.5): the runs
that an unconditional extension made collapse (the deep MLP; the MNIST-1D CNN with SGD from a
warm checkpoint: 0.02 → 0.70 on one seed) were those whose best calibration run lowered the
loss by 0.5–3 % of its start, where the candidates' differences are noise. It costs one
40-step run where it fires (mean 251 → 268 FB, at most 416). The threshold was chosen on these
runs; it has not been confirmed on other seeds. What it does not change: the worst cell (the
deep MLP with momentum from a warm checkpoint, where the contest's runs sit on a plateau) and
the 9 collapsed runs.

gn-probe/0.5 (issue 11, third round) changed one thing: with Adam or AdamW the per-group rates
stay within 3× of the single-group rate (:data:`ADAM_CLASS`, ``adam_bounds``) instead of 10×
(where the single-group η is positive; see ``unanchored``).
Adam's step is already normalised per coordinate by its second-moment estimate, so curvature
along it says less about how far one layer's rate should stray from the others', and the
AdamW cells where the per-layer rates lost to the single-group rate were those with the widest
spreads (wine from a warm checkpoint: a 133-example data set the wide rates overfit). On AdamW
over the 9 tasks × 2 starts × 3 seeds (``bench/quality --optimizers adamw --variants
traj-b3``; "behind" = cells more than 0.05 behind the same probe's single-group rate):

=================================  ======  =====  =====  =====  ======  ====================
rule (AdamW cells)                 median  mean   worst  >0.15  behind  vs 0.4: better/worse
=================================  ======  =====  =====  =====  ======  ====================
gn-probe/0.4: bounds 10            0.001   0.024  0.329  1      3
gn-probe/0.5: bounds 3 (kept)      0.001   0.012  0.079  0      0       8 / 4
single-group rate                  0.020   0.053  0.341  2      0       4 / 11
=================================  ======  =====  =====  =====  ======  ====================

The four cells it made worse by more than 0.01: breast_cancer warm (−0.036 → 0.079), the
1-D-signal CNN (init −0.047 → 0.030, warm 0.000 → 0.057) and the GPT from init (−0.010 →
0.001); the eight better include wine warm (0.329 → 0.063) and wine-resmlp init (0.080 →
0.015). SGD and momentum are unchanged. Tried in the same round and not adopted:

- λ₁ scored on a validation split (``validation=``, variant ``val-0.2``: 20 % of the training
  data held out of the probe's batches). On the wine tasks, where the rates overfit (2 tasks ×
  2 starts × 3 optimizers × 3 seeds): median 0.046 → 0.042, mean 0.100 → 0.106, worst 0.329 →
  0.293, 6 cells better and 2 worse by more than 0.01, still 3 behind. On AdamW across the 9
  tasks (2 seeds): median −0.001 → 0.003, worst 0.120 → 0.318 (wine-resmlp, warm). With 27
  validation examples the contest trades one noise for another. Kept as an option.
- AdamW only, shrinking each group half-way toward the single-group rate (``shrink=0.5``; 2
  seeds): median 0.003, worst 0.103, 4 cells better and 4 worse than bounds 10.
- Momentum only (9 tasks × 2 starts × 3 seeds), where the worst cells now are: bounds 3 as for
  Adam (mean regret 0.058 → 0.045, but worst 0.313 → 0.327 and collapsed runs 3 → 6: the deep
  MLP's wide rates are what lets it learn), and a stronger margin, λ₁ × 0.25 instead of 0.5
  (median 0.014 → 0.023, worst 0.313 → 0.430 on wine-resmlp warm, collapses 3 → 2), and λ₁
  candidates {0.03, 0.1, 0.3, 1} for momentum (worst 0.313 → 0.272, mean 0.058 → 0.049, but
  collapsed runs 3 → 5). None: safety first.

gn-probe/0.4 (issue 11, second round) changed one thing: when the user's optimizer has
heavy-ball momentum and the per-layer rates span more than 30× (:data:`WIDE_SPREAD`, the
spread the notes already warned about), the calibrated λ₁ is halved and a note says so. The
rules tried, each on the same 96 runs (the 8 small tasks of ``bench/quality`` × 2 starts × 3
optimizers × 2 seeds, 300 steps; 48 cells; regret as in the README; "collapsed" = runs whose
final training loss stayed nearer the start than the grid's best point's):

======================================================  ======  =====  =====  =====  =========
rule                                                    median  mean   worst  >0.15  collapsed
======================================================  ======  =====  =====  =====  =========
gn-probe/0.3                                            0.005   0.016  0.758  4      6
spread compressed to 30× in log space                   0.008   0.098  0.956  7      8
spread compressed to 10× in log space                   0.014   0.111  0.991  8      7
bounds 3 instead of 10                                  0.011   0.035  0.745  4      6
shrink 0.5 toward the single-group rate                 0.023   0.093  0.994  9      6
single-group candidates in the calibration contest      0.007   0.020  0.758  5      6
λ₁ candidates {0.03, 0.1, 0.3, 1}                       0.004   0.028  0.961  5      7
λ₁ halved always                                        0.021   0.023  0.336  7      3
λ₁ halved for heavy ball with a spread > 30× (kept)     0.004   −0.013 0.268  4      4
single-group rate of the same probe                     0.050   0.230  0.993  17     15
======================================================  ======  =====  =====  =====  =========

Halving everywhere buys the safest worst case but costs plain SGD on the CNNs, which want a
large λ₁ (digits CNN from init: 0.14 → 0.46); restricted to heavy ball with a wide spread it
keeps the median and fixes the cells where momentum learned and then fell back (a digits
transformer from a warm checkpoint: regret 0.22 → 0.01, pinned in
``tests/bench/test_no_collapse.py``; the 8-layer ReLU MLP: 0.76 → 0.26 from init, 0.67 → 0.27
warm). What none of these fixes: that deep MLP trains only in a narrow band of global rates
with momentum (a seed whose every rate but the grid's 0.1 stays at chance level), and the
residual MLP on wine's 133 examples from a warm checkpoint, where the rates that lower the
training loss fastest overfit. Compressing the spread was the surprise: the wide spreads are
not noise to remove but what makes per-layer rates win (the deep MLP with plain SGD beats the
grid by its whole improvement, regret −1.0, and loses it when compressed).

gn-probe/0.3 (issue 11) changed one thing: λ₁ is chosen from {0.03, 0.1, 0.3} instead of
{0.1, 0.3, 1}. What was tried, on the expanded ``bench/quality`` (9 tasks, peers, regret =
the share of the grid's improvement a method misses; see the README's quality section):

- the candidates {0.03, 0.1, 0.3} (kept): the winning λ₁ of a 40-step training-loss contest
  is too large for a 300-step run. On the 54 cells of the 9 tasks (one seed), the worst
  regret fell from 1.00 to 0.52 (cells above 0.15: 7 → 5) for a median of 0.008 instead of
  0.004, and the pinned collapse (``tests/bench/test_no_collapse.py``: a tanh MLP on wine,
  plain SGD, where gn-probe/0.2 gave the head 6.8 and the held-out loss never left chance
  level) is gone. 9 cells got better by more than 0.01 regret (up to 0.79), 9 worse (up to
  0.15: the GPT and the digits CNN with plain SGD or momentum, which want λ₁ near 1). A
  safer worst case for a slightly higher median: the issue puts safety first.
- shrinking each group toward the single-group rate in log space (``shrink=0.5``), tighter
  bounds (3× instead of 10×) and both: re-run on the 8 cells where the per-layer rates did
  worst, each won some cells and lost others by as much (deep ReLU MLP with momentum: 0.52 →
  0.98 with shrink, −0.28 with both; a residual MLP: 0.24 → 0.05 with both, a tanh MLP 0.21 →
  0.34); one seed cannot tell them apart, so neither is the default. ``shrink`` stays an
  option.
- a stability check that falls back to the single-group rate when its 40-step calibration run
  ends lower than the per-layer one: it could not see the pinned collapse (there the per-layer
  run fits the training data *better*; it is the held-out loss that explodes) and was dropped.
- held-out calibration: the probe sees only training batches; on the small data sets where
  the rates overfit (wine: 133 examples), 40 steps of batch 32 revisit every example, so a
  "held-out" batch from the same stream is not held out. Not pursued.

gn-probe/0.2 (issue 3) built the rest of the rule. Its evidence (``python -m bench.quality``;
4 small tasks × {fresh init, warm checkpoint} × {SGD, momentum 0.9, AdamW} × 2 seeds, 300
steps; "ratio" = best held-out loss / that of the best point of a 7-point grid; median and
worst over the 24 cells, selection cost in forward+backward passes):

- fixed-θ probe of docs/method.md §7.1 (K = 8, cubic, held-out λ₁): median 2.07, worst 26.9. The
  one-step optimum at a single θ is a poor long-run rate: coupling drives some groups' η
  negative, others far above what 300 steps tolerate.
- trajectory, published relu only (no bounds), λ₁ = 0.3: 1.56 / 10.3 (a group pinned at 0
  for the whole run never learns; a LayerNorm or embedding group with tiny curvature along
  ``u`` gets 10⁴× the rate of the others and training diverges).
- + single-group η₁ as floor/ceiling (η_s ∈ [η₁/10, 10·η₁]): 1.18 / 10.6; bounds 3: no gain.
- λ₁ fixed at 0.1 / 0.3 / 1: 1.20 / 1.18 / 2.09 — no single λ₁ suits every task and
  optimizer (momentum wants ≤ 0.1, plain SGD on a CNN wants 1).
- + λ₁ calibrated by a 40-step run per candidate {0.1, 0.3, 1} from the checkpoint (lowest
  training loss at the end, same batches): 1.11 / 9.6 with the cubic rule, **1.08 / 3.8 with
  Newton + Levenberg fallback** (the cubic rule's d3 passes double the cost and bought
  nothing along a trajectory that re-solves every 4 steps), 207 passes vs 2,100 for the grid.
- granularity: per tensor 1.37 / 16.6 (bias groups are noise-dominated); a single group 1.09
  / 1.7 (more robust, but no per-layer rates); 20 steps instead of 40: 1.52 / 18.5.
- preferring the smaller of near-equal calibration candidates (within 2–10 %): no change.

On issue 3's full benchmark (the tiny GPT added, 3 seeds, 30 cells) gn-probe/0.2 reached a
median ratio of 1.08 and a worst of 3.0, within 5 % of the grid in 14 of 30 cells, at 190–362
passes (the grid: 2,100). The current rule's numbers, on the expanded benchmark, and the targets
it still misses are in the README's quality section.

The trajectory copes with what kills the fixed-θ probe because it does what the published
optimizer does (docs/method.md §3.4): re-solve η along its own path with λ₁, relu and an EMA, so
that early curvature changes and noise average out; ``lr_s = λ₁ · median(η̄_s)`` over the second
half of the run. The steps are the user's own ``torch.optim`` optimizer's: ``u`` is read off a
real step at lr = 1 (the update is linear in lr for SGD, heavy ball, Nesterov, Adam and AdamW),
so the optimizer state evolves as in training and the recommended rate multiplies the same
``u`` the user's optimizer will take — no ``1 − β`` conversion for momentum.

Where the code is: :class:`TrajectoryOptions` (the settings), :func:`trajectory_probe` (the
method), :func:`run_trajectory` (the grouped-Newton run), :func:`calibrate_scale` (the rule that
picks λ₁) and :func:`calibration_losses` (one calibration run).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from lrprobe.rules.calibration import MOMENTUM_CALIBRATION_FACTOR, heavy_ball
from lrprobe.worker.newton.directions import OptimizerSpec, ParamState, build_optimizer
from lrprobe.worker.newton.errors import NumericalError
from lrprobe.worker.newton.meter import Meter, ProbeProgress
from lrprobe.worker.newton.microbatches import accumulated_backward
from lrprobe.worker.newton.partition import Group
from lrprobe.worker.newton.pooled import mean_summaries, single_eta, single_rate
from lrprobe.worker.newton.precision import Precision
from lrprobe.worker.newton.report import group_results, model_fields, solver_notes
from lrprobe.worker.newton.result import GroupResult, ProbeResult, ScaleCheck, flag_notes
from lrprobe.worker.newton.schedules import SCHEDULES, Schedule, multipliers
from lrprobe.worker.newton.solve import solve
from lrprobe.worker.newton.state import preserved, scratch
from lrprobe.worker.newton.summaries import LossFn, Summaries, check_loss, summaries

FbTimer = Callable[[], AbstractContextManager[None]]
# What an evaluation does when its single-group η, the anchor of the bounds, is not positive
# (see TrajectoryOptions.unanchored).
Unanchored = Literal["relu", "hold", "last"]

# A diverging trajectory is run again with rates 10× smaller, at most this many times in all.
TRAJECTORY_ATTEMPTS = 3
# Optimizers whose step is normalised per coordinate by a second-moment estimate, for which
# gn-probe/0.5 keeps the per-group rates within adam_bounds of the single-group rate. Measured
# on AdamW; Adam takes the same step without the decoupled decay. Others (Lion, RMSprop, …)
# were not measured and keep ``bounds``.
ADAM_CLASS = frozenset({"adam", "adamw"})

# Seed offsets of the summary batches and of the calibration runs' dropout masks.
SUMMARY_SEED, CALIBRATION_SEED = 7919, 200_003
# The share of tail evaluations with a negative raw η from which a group is flagged
# ``negative``. Calibrated on the quality benchmark (gn-probe/0.3, 54 runs): runs with such a
# group had a median regret of 0.032 against 0.005 (39 % above 0.05 against 19 %), where the
# old "median η ≤ 0" (a share of 0.5) flagged 36 of 54 runs and barely separated them.
NEGATIVE_SHARE = 0.8
# Per-layer rates spanning more than this factor: such runs did worse on the benchmark (median
# regret 0.047 against 0.005, 46 % above 0.05 against 10 %); the probe says so in its notes.
WIDE_SPREAD = 30.0
# The calibration runs lowered the training loss by less than this share of its value at the
# checkpoint: a plateau (or candidates too small to leave it). The rates come from curvature
# that changes once training leaves it; the notes say so (see _plateau_note).
PLATEAU_DROP = 0.05
# How the plateau note names itself (the quality benchmark finds it by these words).
PLATEAU_MARK = "(a plateau)"
# A trajectory whose training loss grows past this multiple of its starting value has
# diverged even if the loss stays finite: a saturated tanh network keeps a finite loss while
# its curvature vanishes and η explodes (seen on the README's digits MLP for 3 seeds of 6).
DIVERGENCE_FACTOR = 10.0


@dataclass(frozen=True)
class TrajectoryOptions:
    """The trajectory method's settings (the arguments of :func:`~lrprobe.worker.newton.probe`;
    ``scale`` is its ``trajectory_scale``).

    Raises:
        ValueError: a setting out of range (the message names it).
    """

    steps: int = 40
    period: int = 4
    smoothing: float = 0.5
    scale: float = 0.3
    bounds: float | None = 10.0
    # The bounds for Adam and AdamW instead (gn-probe/0.5; see the module docstring). None: the
    # same bounds for every optimizer.
    adam_bounds: float | None = 3.0
    # An evaluation whose single-group η is not positive gives the bounds no anchor: "relu"
    # updates the rates unbounded there (the default: the bounds' lapse is what lets the deep
    # MLP's layers spread wide and win; enforcing them was tried after gn-probe/0.7 and not
    # kept, see the module docstring); "hold" leaves the rates as they were (dropped groups
    # included; the first evaluation still sets them); "last" bounds them around the latest
    # positive single-group η (before any, around the median positive group η of the first
    # such evaluation). Without bounds all three are relu alone.
    unanchored: Unanchored = "relu"
    calibrate: tuple[float, ...] = (0.03, 0.1, 0.3)
    calibration_steps: int = 40
    # When the largest candidate wins the contest with a loss drop at least extend_edge times
    # the next-largest candidate's and at least extend_min_drop of the loss it started from,
    # one more candidate past it is run (gn-probe/0.6; see the module docstring). None: never.
    extend_edge: float | None = 1.3
    extend_min_drop: float = 0.1
    # Whether the extension also runs with heavy-ball momentum (gn-probe/0.6: no; on seeds it
    # was not chosen on it added collapsed runs there and gained nothing on average).
    extend_momentum: bool = False
    # λ₁ is the smallest candidate whose loss drop is within this share of the best one's
    # (gn-probe/0.7): near-ties are noise, and the larger rate is the riskier one. (Under
    # gn-probe/0.2 it changed nothing; it matters once the longer momentum contest brings the
    # saturated training loss of small data sets to near-ties.)
    calibration_tolerance: float = 0.05
    # With heavy-ball momentum each calibration run is this many times calibration_steps long
    # (gn-probe/0.7): the instability a large λ₁ breeds under momentum shows after 40 steps.
    momentum_calibration_factor: int = MOMENTUM_CALIBRATION_FACTOR
    shrink: float = 0.0
    # λ₁ is multiplied by this when the user's optimizer has heavy-ball momentum and the
    # per-layer rates span more than WIDE_SPREAD (gn-probe/0.4; see the module docstring).
    unsure_momentum: float = 0.5
    # Newton with the solver's Levenberg fallback: as good as the cubic rule along the
    # trajectory at half the passes (see above); the cubic rule's d3 is then not needed.
    lam_int: float = 0.0
    third_order: bool = False
    seed: int = 0
    micro_batch: int | None = None
    precision: Precision = "float32"
    # Batches the probe never trains on; when given, each calibration run is scored by how much
    # it lowered their loss instead of the training loss (for data sets small enough to overfit).
    validation: tuple[Any, ...] = ()
    # Each calibration run follows this schedule, compressed to the run's length (see
    # schedules.py). Tried for training under warm-up + cosine and not kept: the constant
    # contest's rates are the better peak (the module docstring has the figures).
    calibration_schedule: Schedule = "constant"

    def __post_init__(self) -> None:
        if self.steps < 2 or self.period < 1 or not 0 <= self.smoothing < 1 or self.scale <= 0:
            raise ValueError(
                "need steps ≥ 2, period ≥ 1, 0 ≤ smoothing < 1 and trajectory_scale > 0"
            )
        if self.calibrate and (self.calibration_steps < 1 or min(self.calibrate) <= 0):
            raise ValueError("calibrate needs positive candidates and calibration_steps ≥ 1")
        if not 0 <= self.shrink <= 1:
            raise ValueError("shrink must lie in [0, 1]")
        if any(b is not None and not b >= 1 for b in (self.bounds, self.adam_bounds)):
            raise ValueError("bounds and adam_bounds must be at least 1 (or None)")
        if not 0 < self.unsure_momentum <= 1:
            raise ValueError("unsure_momentum must lie in (0, 1]")
        if self.extend_edge is not None and not self.extend_edge >= 1:
            raise ValueError("extend_edge must be at least 1 (or None)")
        if not 0 <= self.extend_min_drop < 1:
            raise ValueError("extend_min_drop must lie in [0, 1)")
        if self.unanchored not in get_args(Unanchored):
            raise ValueError("unanchored must be 'relu', 'hold' or 'last'")
        if not 0 <= self.calibration_tolerance < 1:
            raise ValueError("calibration_tolerance must lie in [0, 1)")
        factor = self.momentum_calibration_factor
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError("momentum_calibration_factor must be an integer of at least 1")
        if self.calibration_schedule not in SCHEDULES:
            raise ValueError(f"calibration_schedule must be one of {', '.join(SCHEDULES)}")

    @property
    def evaluations(self) -> int:
        """How many times η is solved along the run (one summary batch each)."""
        return -(-self.steps // self.period)


def trajectory_probe(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    spec: OptimizerSpec,
    groups: Sequence[Group],
    optimizer_state: ParamState | None,
    options: TrajectoryOptions,
    *,
    progress: Callable[[ProbeProgress], None] | None,
    device: torch.device,
    started: float,
) -> ProbeResult:
    """The trajectory probe of ``model`` (the method is described in this module's docstring).

    Args:
        optimizer_state: the checkpoint's optimizer state, loaded into every run's optimizer.
        started: ``time.perf_counter()`` when the probe began (its cost counts from there).

    Raises:
        ValueError: ``batches`` ran out before ``steps + evaluations + calibration_steps``.
        NumericalError: the loss or the summaries are not finite at the checkpoint.
    """
    if spec.name in ADAM_CLASS and options.adam_bounds is not None:
        options = replace(options, bounds=options.adam_bounds)
    if _heavy_ball(spec):
        longer = options.calibration_steps * options.momentum_calibration_factor
        options = replace(options, calibration_steps=longer)
        if not options.extend_momentum:
            options = replace(options, extend_edge=None)
    steps, evaluations = options.steps, options.evaluations
    extra = options.calibration_steps if options.calibrate else 0
    need = steps + evaluations + extra
    drawn = list(itertools.islice(iter(batches), need))
    if len(drawn) < need:
        raise ValueError(
            f"the probe needs {need} batches ({steps} steps + {evaluations} evaluations"
            + (f" + {extra} calibration steps" if extra else "")
            + f"), the iterable gave {len(drawn)}: pass an endless iterator or lower steps"
        )
    meter = Meter(progress, total=steps + extra * len(options.calibrate), device=device)

    def on_step(s: Summaries | None) -> None:
        if s is not None:
            meter.count_summaries(s, options.third_order)
        meter.tick("trajectory")

    scale = options.scale
    notes: list[str] = []
    for attempt in range(TRAJECTORY_ATTEMPTS):
        with preserved(model, options.seed):
            traj = run_trajectory(
                model, loss_fn, drawn[:steps], drawn[steps : steps + evaluations], spec, groups,
                optimizer_state, options, scale=scale, on_step=on_step, fb_timer=meter.fb,
            )  # fmt: skip
        if not traj.diverged or attempt + 1 == TRAJECTORY_ATTEMPTS:
            break
        # Rates that blow the run up say little about the checkpoint: start again, gentler.
        notes.append(
            f"the trajectory diverged at rates {scale:g}·η after {traj.steps} steps; "
            "it was run again with rates 10× smaller"
        )
        scale *= 0.1
        meter.total += steps
    if traj.diverged:
        # The run blew up at λ₁: the rates it used are too large by an unknown factor.
        scale *= 0.3
        notes.append(
            f"the trajectory diverged after {traj.steps} steps: rates lowered by 0.3×; "
            "probe with a smaller trajectory_scale"
        )
    if options.shrink > 0:
        traj = _shrunk(traj, options.shrink)
    tail = traj.tail()
    window = traj.summaries[tail]
    mean = mean_summaries(window)
    solution = solve(mean, options.lam_int)
    # Interpolated medians, like the interval's quantiles: torch.median takes the lower middle
    # value of an even count, which can fall below the 10 % quantile.
    eta = torch.quantile(traj.smoothed[tail], 0.5, dim=0)
    single_values = traj.single[tail].clamp(min=0)
    eta_single = float(torch.quantile(single_values, 0.5))
    single_note = None
    if eta_single <= 0:
        eta_single, single_note = single_rate(mean, options.lam_int)
    single_lr = scale * eta_single
    lo, hi = torch.quantile(single_values, torch.tensor([0.1, 0.9], dtype=torch.float64))
    single_interval = (scale * float(lo), scale * float(hi)) if single_note is None else (
        single_lr, single_lr,
    )  # fmt: skip
    scale_checks: list[ScaleCheck] = []
    if options.calibrate:
        calibration_batches = drawn[steps + evaluations :]

        def run_losses(per_group: list[float]) -> CalibrationRun:
            with preserved(model, options.seed):
                run = calibration_losses(
                    model, loss_fn, calibration_batches, spec, groups, per_group,
                    optimizer_state, seed=options.seed + CALIBRATION_SEED, fb_timer=meter.fb,
                    micro_batch=options.micro_batch, validation=options.validation,
                    schedule=options.calibration_schedule,
                )  # fmt: skip
            for _ in run.losses:
                meter.tick("calibration")
            if run.validation is not None:
                meter.passes["forward"] += len(options.validation)
            return run

        rates = [float(e) if e > 0 else eta_single for e in eta]
        prior = scale
        baseline = None
        if options.validation:
            baseline = validation_loss(model, loss_fn, options.validation)
            meter.passes["forward"] += len(options.validation)

        def extended() -> None:
            meter.total += options.calibration_steps

        scale, scale_checks, calibration_note = calibrate_scale(
            run_losses, rates, options.calibrate, options.calibration_steps, baseline,
            extend_edge=options.extend_edge, extend_min_drop=options.extend_min_drop,
            on_extend=extended, tolerance=options.calibration_tolerance,
        )  # fmt: skip
        if calibration_note:
            notes.append(calibration_note)
        plateau_note = None if options.validation else _plateau_note(scale_checks, traj.losses)
        if plateau_note:
            notes.append(plateau_note)
        margin_note = _momentum_margin(spec, rates, options.unsure_momentum)
        if margin_note:
            scale *= options.unsure_momentum
            notes.append(margin_note)
        single_lr = scale * eta_single
        single_interval = (scale * single_interval[0] / prior, scale * single_interval[1] / prior)
    newton = solve(mean, 0.0)
    smoothed, raw = traj.smoothed[tail], traj.etas[tail]
    groups_out = group_results(
        groups, dict(model.named_parameters()), window, mean, solution, newton,
        eta=eta,
        eta_interval=torch.quantile(
            smoothed, torch.tensor([0.1, 0.9], dtype=torch.float64), dim=0
        ).T,
        eta_samples=raw,
        negative=(raw < 0).double().mean(0) >= NEGATIVE_SHARE,
        factor=scale,
        single_lr=single_lr,
        single_interval=single_interval,
        # low_snr is not raised by the trajectory probe: on the quality benchmark it fired in
        # 45 of 54 runs, and those did better, not worse (g_snr is still reported).
        flag_low_snr=False,
    )  # fmt: skip
    if single_note:
        notes.append(single_note)
    notes += solver_notes(solution)
    notes += flag_notes(groups_out)
    spread = _spread_note(groups_out, single_lr)
    if spread:
        notes.append(spread)
    return ProbeResult(
        optimizer=spec.to_dict(),
        direction=f"{spec.name} steps along a {traj.steps}-step grouped-Newton trajectory",
        lr_factor=1.0,
        scale=scale,
        groups=groups_out,
        single_group_lr=single_lr,
        single_group_eta=eta_single,
        single_group_interval=single_interval,
        lam_int=options.lam_int,
        **model_fields(mean, solution, newton, eta, realised_at_scale=None),
        scale_checks=scale_checks,
        cost=meter.cost(started, batches=len(drawn)),
        notes=notes,
        method="trajectory",
        trajectory_losses=traj.losses,
    )


def calibrate_scale(
    run_losses: Callable[[list[float]], CalibrationRun],
    rates: Sequence[float],
    candidates: Sequence[float],
    steps: int,
    validation_baseline: float | None = None,
    *,
    extend_edge: float | None = None,
    extend_min_drop: float = 0.0,
    on_extend: Callable[[], None] | None = None,
    tolerance: float = 0.0,
) -> tuple[float, list[ScaleCheck], str | None]:
    """λ₁: the smallest candidate whose calibration run lowered the training loss within
    ``tolerance`` of the most any did (0: the one with the lowest loss).

    λ₁ by a short run of the user's optimizer per candidate: the one-step model cannot say how
    large a fixed rate stays stable over hundreds of steps (quality benchmark). A run scores
    the mean loss of its last quarter minus its first loss; a run that stopped early or went
    non-finite scores +∞. With validation batches, a run scores their loss after it minus
    ``validation_baseline`` (their loss at the checkpoint) instead.

    With ``extend_edge``, a contest won by its largest candidate (under the tolerance rule: no
    smaller candidate comes within ``tolerance`` of its drop) while the loss still fell
    steeply there (a drop at least ``extend_edge`` times the next-largest candidate's, and at
    least ``extend_min_drop`` of the loss the score started from) runs one more candidate past
    it, on the same log grid (the largest × its ratio to the next-largest); it is a candidate
    like the others. ``on_extend`` is called before that run.

    Args:
        run_losses: a ``steps``-step run from the checkpoint at the given per-group rates (the
            same batches for every call): its training losses and, with validation batches,
            their loss at its end.
        rates: the per-group rates ``η̄_s`` that each candidate multiplies.

    Returns:
        λ₁, one :class:`ScaleCheck` per run (the candidates', then the extension's;
        ``predicted`` is NaN: no model predicts a run), and a note when no run lowered the loss
        (λ₁ is then the smallest candidate).
    """

    started: dict[float, float] = {}  # candidate → the loss its score is measured from

    def scored(candidate: float) -> ScaleCheck:
        run = run_losses([candidate * r for r in rates])
        losses = run.losses
        # The score is measured from `origin`: the validation batches' loss at the checkpoint
        # (`end`: theirs after the run), or else the run's first training loss.
        end: float | None = None
        if validation_baseline is not None and run.validation is not None:
            origin, end = validation_baseline, run.validation
        else:
            origin = losses[0] if losses else math.nan
        started[candidate] = origin
        tail_losses = losses[-max(1, len(losses) // 4) :]
        finite = len(losses) == steps and all(map(math.isfinite, losses))
        if not finite:
            change = math.inf
        elif end is not None:
            after = end - origin
            change = after if math.isfinite(after) else math.inf
        else:
            change = sum(tail_losses) / len(tail_losses) - origin
        return ScaleCheck(candidate, math.nan, change)

    checks = [scored(c) for c in candidates]
    chosen = _chosen(checks, tolerance)
    if (
        extend_edge is not None
        and chosen is not None
        and chosen.scale == max(candidates)
        and _steep_edge(checks, started, extend_edge, extend_min_drop)
    ):
        *_, below, top = sorted(candidates)
        if on_extend is not None:
            on_extend()
        checks.append(scored(top * top / below))
        chosen = _chosen(checks, tolerance)
    if chosen is not None:
        return chosen.scale, checks, None
    which = "validation" if validation_baseline is not None else "training"
    note = (
        f"no calibration run lowered the {which} loss: using the smallest candidate scale; "
        "treat these rates as an upper bound"
    )
    return min(candidates), checks, note


def _chosen(checks: Sequence[ScaleCheck], tolerance: float) -> ScaleCheck | None:
    """The smallest candidate whose drop is at least ``1 − tolerance`` times the largest drop;
    None when no run lowered the loss (or stayed finite)."""
    best = min(checks, key=lambda c: c.realised)
    if not (math.isfinite(best.realised) and best.realised < 0):
        return None
    return min((c for c in checks if c.realised <= (1 - tolerance) * best.realised),
               key=lambda c: c.scale)  # fmt: skip


def _steep_edge(
    checks: Sequence[ScaleCheck], started: Mapping[float, float], gain: float, min_drop: float
) -> bool:
    """Whether the loss was still falling steeply at the contest's largest candidate, which
    the caller has seen win (so its drop is positive and the largest): its drop is at least
    ``gain`` times the next-largest candidate's and at least ``min_drop`` of the loss it
    started from. On a plateau (a drop of a few per cent) the candidates' differences are
    noise, and larger rates are where long runs fall back."""
    if len(checks) < 2:
        return False
    ordered = sorted(checks, key=lambda c: c.scale)
    top, below = ordered[-1], ordered[-2]
    if -top.realised < min_drop * abs(started[top.scale]):
        return False
    return not below.realised < 0 or top.realised <= gain * below.realised


def _plateau_note(checks: Sequence[ScaleCheck], losses: Sequence[float]) -> str | None:
    """Why the rates may not last, or None: the best calibration run lowered the training loss,
    but by less than :data:`PLATEAU_DROP` of its value at the checkpoint (the trajectory's first
    loss). On the quality benchmark (gn-probe/0.7, 162 runs) it marked 11 runs, of the deep ReLU
    MLP and of the MNIST-1D CNN with plain SGD: their best held-out loss beat the grid's on
    average (mean regret −0.51), but 3 of them ended the run collapsed, against 2 of the other
    151: the curvature the rates are read from changes once training leaves the plateau. Probing
    again at the probe's horizon (the benchmark's ``reprobe`` variant) left none of the 11
    collapsed, but its rates were smaller in 9 of them (2.5–136× by geometric mean) and cost the
    five MNIST-1D runs a quarter of the grid's improvement or more each (mean regret −0.03 →
    0.30). Training them under warm-up + cosine with the same rates as the peak (``--schedule
    cosine``) left none of the 11 collapsed by the benchmark's measure, at no extra compute,
    but trained them worse about as often as better: the best held-out loss was lower than at
    constant rates in 4 (deep MLP, SGD) and higher in 7 (the five MNIST-1D runs by 5–16 %, a
    deep-MLP SGD run 0.24 → 1.14, and a momentum run that stalled at chance level, like every
    grid point under that schedule). On seeds 3–4 it marked 6 runs: 3 better (deep MLP, SGD),
    3 worse, one of them (momentum) stalled where at constant rates it had learned: 7 better and
    10 worse of 17. Keeping the best checkpoint costs nothing; hence the note's order."""
    drops = [-c.realised for c in checks if math.isfinite(c.realised)]
    if not drops or not losses or not max(drops) > 0:
        return None  # no run lowered the loss: calibrate_scale's own note says so
    share = max(drops) / abs(losses[0]) if losses[0] else math.inf
    if share >= PLATEAU_DROP:
        return None
    return (
        f"the calibration runs lowered the training loss by at most {share:.1%} of its value at "
        f"the checkpoint {PLATEAU_MARK}: the rates come from curvature that changes once training "
        "leaves it, and such runs can collapse late: keep the best checkpoint (training under "
        "a decaying schedule with these rates as its peak, lrprobe.warmup_cosine, made such "
        "collapses rarer on the benchmark, but trained such runs worse about as often as better)"
    )


def _momentum_margin(spec: OptimizerSpec, rates: Sequence[float], factor: float) -> str | None:
    """Why λ₁ is lowered, or None: heavy-ball momentum with per-layer rates that span more
    than :data:`WIDE_SPREAD`. The momentum buffer multiplies the step by up to 1/(1 − β), and
    the instability it breeds builds over more steps than a calibration run sees; a
    wide spread marks the runs where the probe is least sure. On the quality benchmark these
    were the runs that learned and then fell back to chance level (see the module docstring)."""
    span = rate_span(rates)
    if factor >= 1 or not _heavy_ball(spec) or span <= WIDE_SPREAD:
        return None
    return (
        f"momentum {spec.momentum:g} with per-layer rates that span {span:.0f}×: the calibrated "
        f"scale was multiplied by {factor:g} for a margin of stability over a long run"
    )


def _heavy_ball(spec: OptimizerSpec) -> bool:
    momenta = (g.overrides.get("momentum") for g in spec.param_groups)
    return heavy_ball(spec.name, spec.momentum, momenta)


def _shrunk(traj: Trajectory, shrink: float) -> Trajectory:
    """η̄ pulled toward the single-group η₁ of each evaluation in log space (where both are
    positive): ``η₁^shrink · η̄^(1−shrink)``. Monotone in η̄, so intervals stay ordered."""
    single = traj.single[:, None].expand_as(traj.smoothed)
    ok = (traj.smoothed > 0) & (single > 0)
    pulled = single.clamp(min=1e-300) ** shrink * traj.smoothed.clamp(min=1e-300) ** (1 - shrink)
    return replace(traj, smoothed=torch.where(ok, pulled, traj.smoothed))


def rate_span(rates: Sequence[float]) -> float:
    """max / min of the positive rates (1 with fewer than two): the spread both notes judge."""
    positive = [r for r in rates if r > 0]
    return max(positive) / min(positive) if len(positive) >= 2 else 1.0


def _spread_note(groups: Sequence[GroupResult], single_lr: float) -> str | None:
    span = rate_span([g.lr for g in groups if "unused" not in g.flags])
    if span <= WIDE_SPREAD:
        return None
    return (
        f"the per-layer rates span {span:.0f}× (more than {WIDE_SPREAD:.0f}×): "
        "on the quality benchmark such recommendations missed more of the grid's improvement; "
        f"if training is unstable, try the single-group rate {single_lr:.3g} for every group"
    )


@dataclass(frozen=True)
class Trajectory:
    """What a short grouped-Newton run saw, one entry per evaluation of the summaries.

    ``etas``: (E, S) raw η (the solver's, at the options' ``lam_int``: Newton with a Levenberg
    fallback by default); ``smoothed``: (E, S) η̄ after relu, bounds and the EMA, i.e. the
    multipliers the run used; ``single``: (E,) the S = 1 rate along the same ``u``;
    ``summaries``: per evaluation; ``losses``: training loss at every step (direction batch);
    ``steps``: optimizer steps taken; ``diverged``: the loss stopped being finite.
    """

    etas: Tensor
    smoothed: Tensor
    single: Tensor
    summaries: list[Summaries]
    losses: list[float]
    steps: int
    diverged: bool = False

    def tail(self) -> slice:
        """The evaluations the recommendation is read from: the second half of the run."""
        E = self.etas.shape[0]
        return slice(E // 2, E) if E > 1 else slice(0, E)


def run_trajectory(
    model: nn.Module,
    loss_fn: LossFn,
    direction_batches: Sequence[Any],
    summary_batches: Sequence[Any],
    spec: OptimizerSpec,
    groups: Sequence[Group],
    optimizer_state: ParamState | None,
    options: TrajectoryOptions,
    *,
    scale: float,
    on_step: Callable[[Summaries | None], None],
    fb_timer: FbTimer,
) -> Trajectory:
    """Take ``len(direction_batches)`` optimizer steps on ``model`` with per-group rates
    ``scale · η̄``, re-solving η every ``options.period`` steps on the next summary batch.

    ``model`` itself is trained and put back bit for bit at the end (:func:`scratch`: no second
    copy of the model on its device; the caller restores RNG state). Steps accumulate gradients
    over micro-batches of ``options.micro_batch`` examples and the summaries run at that
    micro-batch and ``options.precision`` (:func:`summaries`); a smaller micro-batch that memory
    forced is kept. ``options.bounds`` = b keeps each η_s within [η₁/b, b·η₁] of the
    single-group η₁ of the same evaluation where η₁ > 0 (None: the published relu only;
    ``options.unanchored`` says what happens where η₁ ≤ 0). ``on_step`` is
    called after each step with the summaries when they were evaluated; ``fb_timer`` wraps each
    forward+backward (the probe's cost unit). A run whose loss stops being finite ends there
    (``diverged``); a non-finite loss at the checkpoint itself raises.
    """
    seed, period, micro_batch = options.seed, options.period, options.micro_batch
    S = len(groups)
    smoothed = torch.zeros(S, dtype=torch.float64)
    etas: list[Tensor] = []
    history: list[Tensor] = []
    singles: list[float] = []
    evaluated: list[Summaries] = []
    losses: list[float] = []
    diverged = False
    # The latest positive single-group η (with "last", before any: see TrajectoryOptions).
    anchor: float | None = None
    with scratch(model) as work:
        params = dict(work.named_parameters())
        optimizer, owner = build_optimizer(spec, [g.param_names for g in groups], params)
        if optimizer_state:
            _load_state(optimizer, params, optimizer_state)
        trained = [params[n] for g in groups for n in g.param_names]
        for t, batch in enumerate(direction_batches):
            torch.manual_seed(seed + t)  # dropout masks of the step: reproducible for a seed
            optimizer.zero_grad(set_to_none=True)
            with fb_timer():
                loss, micro_batch = accumulated_backward(
                    loss_fn, work, batch, trained, micro_batch, check_loss if t == 0 else None
                )
                if t == 0:
                    start = float(loss)
                elif not bool(torch.isfinite(loss)) or _blew_up(float(loss), start):
                    diverged = True
                    break
            losses.append(float(loss))
            s = None
            if t % period == 0 and t // period < len(summary_batches):
                u = _unit_step(optimizer, params)  # commits the optimizer state, restores θ
                # The step is in u now: the gradients would only add one model's worth of
                # memory to the summaries' peak.
                optimizer.zero_grad(set_to_none=True)
                try:
                    s = summaries(
                        work, loss_fn, summary_batches[t // period], u, groups,
                        options.third_order, total_third_order=options.third_order,
                        seed=seed + SUMMARY_SEED + t, micro_batch=micro_batch,
                        precision=options.precision,
                    )  # fmt: skip
                    micro_batch = s.micro_batch
                except NumericalError:
                    if t == 0:
                        raise
                    diverged = True
                    break
                if not _finite(s):
                    if t == 0:
                        raise NumericalError(
                            "non_finite_summaries",
                            "derivatives of the loss are not finite at the checkpoint",
                        )
                    diverged = True
                    break
                solution = solve(s, options.lam_int)
                eta = solution.eta
                single = single_eta(s, options.lam_int)
                if single > 0:
                    anchor = single
                elif options.unanchored == "last" and anchor is None:
                    positive = eta[eta > 0]
                    anchor = float(positive.median()) if len(positive) else None
                held = (
                    options.unanchored == "hold"
                    and options.bounds is not None
                    and bool(etas)  # the first evaluation sets the rates
                    and not single > 0
                )
                if not held:
                    around = anchor if options.unanchored == "last" and anchor else single
                    bounded = _bounded(eta, around, options.bounds)
                    bounded[list(solution.dropped)] = 0.0  # groups that do not move the loss
                    # The published order (docs/method.md §3.4): relu, then the EMA, first
                    # evaluation unsmoothed.
                    rho = options.smoothing if etas else 0.0
                    smoothed = rho * smoothed + (1 - rho) * bounded
                etas.append(eta)
                history.append(smoothed.clone())
                singles.append(single)
                evaluated.append(s)
                with torch.no_grad():
                    for i, group in enumerate(groups):
                        for n in group.param_names:
                            params[n].sub_(scale * float(smoothed[i]) * u[n])
            else:
                for i, param_group in zip(owner, optimizer.param_groups, strict=True):
                    param_group["lr"] = scale * float(smoothed[i])
                optimizer.step()
            on_step(s)
    return Trajectory(
        etas=torch.stack(etas),
        smoothed=torch.stack(history),
        single=torch.tensor(singles, dtype=torch.float64),
        summaries=evaluated,
        losses=losses,
        steps=len(losses),
        diverged=diverged,
    )


def _blew_up(loss: float, start: float) -> bool:
    return start != 0 and loss - start > DIVERGENCE_FACTOR * abs(start)


def _unit_step(optimizer: torch.optim.Optimizer, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``u`` = the optimizer's step at lr = 1 for the gradients in ``.grad``; θ is restored.

    The optimizer state advances as it would in training: the step is taken right after, with
    the same gradient, as ``θ − lr_s · u``, which is what the optimizer would do at ``lr_s``.
    """
    before = {n: p.detach().clone() for n, p in params.items()}
    for group in optimizer.param_groups:
        group["lr"] = 1.0
    optimizer.step()
    u = {}
    with torch.no_grad():
        for n, p in params.items():
            u[n] = before[n] - p.detach()
            p.copy_(before[n])
    return u


def _load_state(
    optimizer: torch.optim.Optimizer, params: Mapping[str, Tensor], state: ParamState
) -> None:
    for name, entries in state.items():
        if name in params:
            optimizer.state[params[name]] = {
                k: v.detach().clone() if isinstance(v, Tensor) else torch.tensor(float(v))
                for k, v in entries.items()
            }


def _finite(s: Summaries) -> bool:
    values = [s.g, s.H] + ([s.d3] if s.d3 is not None else [])
    total = s.d3_total if s.d3_total is not None else 0.0
    return all(bool(torch.isfinite(v).all()) for v in values) and abs(total) < float("inf")


def _bounded(eta: Tensor, single: float, bounds: float | None) -> Tensor:
    """relu (docs/method.md §3.4), then, with ``bounds``, the single-group η as a floor/ceiling: a
    group that coupling drives negative still learns, and a group with tiny curvature along ``u``
    (LayerNorm gains, embeddings) cannot take a step the whole model would not survive. Without
    a positive ``single`` there is no anchor: relu alone (see ``TrajectoryOptions.unanchored``)."""
    eta = eta.clamp(min=0)
    if bounds is None or not single > 0:
        return eta
    return eta.clamp(min=single / bounds, max=single * bounds)


def calibration_losses(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    spec: OptimizerSpec,
    groups: Sequence[Group],
    rates: Sequence[float],
    optimizer_state: ParamState | None,
    *,
    seed: int,
    fb_timer: FbTimer,
    micro_batch: int | None = None,
    validation: Sequence[Any] = (),
    schedule: Schedule = "constant",
) -> CalibrationRun:
    """Training losses of a short run of the user's optimizer from the checkpoint with the
    per-group ``rates``, on ``batches`` (the same batches for every candidate, so that the
    comparison between candidates is not drowned in batch noise). Stops at a non-finite loss.
    ``model`` is trained in place and put back (:func:`scratch`); steps accumulate gradients
    over micro-batches of ``micro_batch`` examples. With ``validation`` batches, also their mean
    loss at the end of the run. ``schedule``: the rates are peak rates, multiplied at each step
    by the schedule's multiplier over ``len(batches)`` steps."""
    losses = []
    validated = None
    with scratch(model) as work:
        params = dict(work.named_parameters())
        trained = [params[n] for g in groups for n in g.param_names]
        optimizer, owner = build_optimizer(spec, [g.param_names for g in groups], params)
        if optimizer_state:
            _load_state(optimizer, params, optimizer_state)
        shape = multipliers(schedule, max(1, len(batches)))
        for t, batch in enumerate(batches):
            for group, index in zip(optimizer.param_groups, owner, strict=True):
                group["lr"] = rates[index] * shape[t]
            torch.manual_seed(seed + t)
            optimizer.zero_grad(set_to_none=True)
            with fb_timer():
                loss, micro_batch = accumulated_backward(loss_fn, work, batch, trained, micro_batch)
                value = float(loss)
                losses.append(value)
                if not value < float("inf"):  # also catches NaN
                    break
            optimizer.step()
        if validation and len(losses) == len(batches):
            validated = validation_loss(work, loss_fn, validation)
    return CalibrationRun(losses, validated)


@dataclass(frozen=True)
class CalibrationRun:
    losses: list[float]
    validation: float | None = None


def validation_loss(model: nn.Module, loss_fn: LossFn, batches: Sequence[Any]) -> float:
    """Mean loss over ``batches`` in eval mode (dropout off, BatchNorm on its running
    statistics), without gradients; the model's mode is put back."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return sum(float(loss_fn(model, batch)) for batch in batches) / len(batches)
    finally:
        model.train(training)
