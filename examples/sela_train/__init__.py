"""SeLa (Asano, Rupprecht & Vedaldi, ICLR 2020) on top of sinklabel: see README.md here."""
