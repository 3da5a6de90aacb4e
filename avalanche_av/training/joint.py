"""Cumulative and multitask (joint) training on the audio-video template.

Reference points rather than continual methods: **Cumulative** trains at each experience on the
union of every experience seen so far; **Multitask** trains once on the union of all tasks, the
paper's upper bound (Sec. 5, "Multitask, the model pre-trained with the entire datasets"). Both
reuse Avalanche's machinery: its ``Cumulative`` and ``JointTraining`` templates concatenate the
experiences' datasets with ``concat_datasets`` in ``train_dataset_adaptation``. The retrieval
evaluation is unchanged.

Two forms of each:

* **Templates**, for code that builds the strategy itself: :class:`CumulativeAVPretraining`
  (``AVPretraining`` + Avalanche's ``Cumulative``) and :class:`JointAVPretraining`
  (``AVPretraining`` + Avalanche's ``JointTraining``: call ``train(stream)`` once).
* **Plugins**, for the strategy registry, which adds plugins to a plain ``AVPretraining`` and
  trains experience by experience: :class:`CumulativePlugin` swaps the adapted dataset for the
  union so far; :class:`MultitaskPlugin` swaps it, at the first experience, for the union of the
  whole training stream (``experience.origin_stream``) and skips training at every later
  experience, so a per-experience loop trains exactly once, on all tasks. Its accuracy matrix then
  has identical rows: A is the multitask score and F is 0 by construction (not a measurement).

See ``docs/baselines_avalanche.md``.
"""
from __future__ import annotations

from typing import List, Optional

from avalanche.benchmarks.utils.utils import concat_datasets
from avalanche.training.plugins import SupervisedPlugin
from avalanche.training.supervised import Cumulative, JointTraining

from .template import AVPretraining, require_av_template

__all__ = ["CumulativePlugin", "MultitaskPlugin", "CumulativeAVPretraining", "JointAVPretraining"]


def _origin_stream(experience, who: str):
    stream = getattr(experience, "origin_stream", None)
    if stream is None:
        raise ValueError(
            f"{who} needs the experience's origin_stream (an Avalanche stream experience) to find the other tasks"
        )
    return stream


class CumulativeAVPretraining(AVPretraining, Cumulative):
    """:class:`~avalanche_av.training.AVPretraining` with Avalanche's ``Cumulative`` dataset adaptation.

    At each ``train(experience)`` the model trains on the concatenation of every experience
    trained so far (Avalanche's ``Cumulative.train_dataset_adaptation``, unchanged). Arguments as
    ``AVPretraining``.
    """


class JointAVPretraining(AVPretraining, JointTraining):
    """:class:`~avalanche_av.training.AVPretraining` with Avalanche's ``JointTraining`` (multitask).

    ``train(stream)`` concatenates all the experiences given and trains once on the union (a
    second call raises Avalanche's ``AlreadyTrainedError``); ``eval`` is the template's retrieval
    evaluation. Arguments as ``AVPretraining``.
    """


class CumulativePlugin(SupervisedPlugin):
    """Cumulative training as a plugin: each experience trains on the union of all seen so far.

    The same adaptation as Avalanche's ``Cumulative`` (``concat_datasets`` of the previous union
    and the new experience), done in ``after_train_dataset_adaptation`` so that it works on a
    plain ``AVPretraining`` and with other plugins. The union grows with the stream (no memory
    bound); the registry marks the method as memory-free. ``state_dict`` records which
    experiences were seen, so a resumed run rebuilds the union from the stream.
    """

    def __init__(self):
        super().__init__()
        self.dataset = None
        #: indices (in their stream) of the experiences in the union, in training order
        self.seen: List[int] = []
        self._pending: Optional[List[int]] = None

    def before_training(self, strategy, **kwargs):
        require_av_template(strategy, self)

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        exp = strategy.experience
        if self._pending is not None:
            stream = _origin_stream(exp, type(self).__name__) if self._pending else None
            self.seen = list(self._pending)
            self.dataset = concat_datasets([stream[i].dataset for i in self.seen]) if self.seen else None
            self._pending = None
        self.dataset = exp.dataset if self.dataset is None else concat_datasets([self.dataset, exp.dataset])
        self.seen.append(int(exp.current_experience))
        strategy.adapted_dataset = self.dataset.train()

    def state_dict(self) -> dict:
        return {"seen": list(self._pending if self._pending is not None else self.seen)}

    def load_state_dict(self, state: dict) -> None:
        self._pending = [int(i) for i in state["seen"]]
        self.dataset, self.seen = None, []


class MultitaskPlugin(SupervisedPlugin):
    """Multitask (joint) training as a plugin: one training pass on the union of all tasks.

    At the first experience it trains on, the adapted dataset becomes the concatenation of every
    experience of the training stream (``experience.origin_stream``), as Avalanche's
    ``JointTraining.train_dataset_adaptation`` builds it; the epochs then run over the union. At
    every later experience it calls ``strategy.stop_training()`` so nothing is trained (the
    evaluation after it still runs). Use it alone: it is a reference point, not a method to
    combine.

    Raises:
        ValueError: the experience has no ``origin_stream``.
    """

    #: Lets a runner see that this method trains once (the remaining experiences are no-ops).
    trains_once = True

    def __init__(self):
        super().__init__()
        self.trained = False

    def before_training(self, strategy, **kwargs):
        require_av_template(strategy, self)

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        if self.trained:
            return
        stream = _origin_stream(strategy.experience, type(self).__name__)
        strategy.adapted_dataset = concat_datasets([e.dataset for e in stream]).train()

    def before_training_exp(self, strategy, **kwargs):
        if self.trained:
            strategy.stop_training()

    def after_training_exp(self, strategy, **kwargs):
        self.trained = True

    def state_dict(self) -> dict:
        return {"trained": bool(self.trained)}

    def load_state_dict(self, state: dict) -> None:
        self.trained = bool(state["trained"])
