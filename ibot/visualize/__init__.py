"""Pictures of what a model learned and how its training went (``ibot visualize``, ``ibot plot``).

- :mod:`ibot.visualize.attention`: last-block [CLS] attention per head, and the 60%-mass maps;
- :mod:`ibot.visualize.correspondence`: mutual nearest patches between two images (or same-class
  pairs of a dataset);
- :mod:`ibot.visualize.patterns`: the patches of a dataset that patch-head prototypes favour;
- :mod:`ibot.visualize.masks`: sample masks over real global crops;
- :mod:`ibot.visualize.curves`: training curves from ``log.jsonl``.

All write PNG through matplotlib's Agg canvas, without pyplot.
"""
