"""Feature maps to look at: does a (pretrained) network separate the classes? (``pscl-embed``)

* :mod:`pscl.embed.features` - pixels chosen per class from test images and masks, read with the
  dense probe's feature extractor;
* :mod:`pscl.embed.maps` - the 2-D map: standardise, PCA to ~30 dimensions, seeded t-SNE (pure);
* :mod:`pscl.embed.networks` - the networks of a run folder (pretrained, fine-tuned, random init)
  and their panel titles;
* :mod:`pscl.embed.plot` - one panel per network coloured by true class, and the CSV of the points;
* :mod:`pscl.embed.cli` - the ``pscl-embed`` command.
"""
