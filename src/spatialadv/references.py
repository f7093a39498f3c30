"""The papers spatialadv implements and reproduces, cited by reports, docstrings and the CLI.

Each entry of :data:`PAPERS` is keyed by a short name and gives the authors,
title and venue; :func:`cite` formats one for a report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Paper", "PAPERS", "cite"]


@dataclass(frozen=True)
class Paper:
    """A citation.

    Attributes:
        authors: author list as printed in the paper ("Anonymous" for a double-blind submission).
        title: the paper's title.
        venue: conference, journal or institution, with the year.
    """

    authors: str
    title: str
    venue: str

    def __str__(self) -> str:
        return f"{self.authors}, *{self.title}*, {self.venue}"

    @property
    def short(self) -> str:
        """The in-text citation: ``"Xiao et al. 2018"``, ``"Carlini & Wagner 2017"``, ``"Anonymous, ICLR 2020 submission"``."""
        if self.authors == "Anonymous":
            return f"Anonymous, {self.venue}"
        names = [a.strip().split(" ")[-1] for a in self.authors.split(",")]
        who = names[0] if len(names) == 1 else f"{names[0]} & {names[1]}" if len(names) == 2 else f"{names[0]} et al."
        year = re.findall(r"(?:19|20)\d\d", self.venue)
        return f"{who} {year[-1]}" if year else who


#: The papers behind the reproduce jobs and the attacks they compare.
PAPERS: dict[str, Paper] = {
    "stadv": Paper("C. Xiao, J.-Y. Zhu, B. Li, W. He, M. Liu, D. Song", "Spatially Transformed Adversarial Examples",
                   "ICLR 2018"),
    "sdpadv": Paper("Anonymous", "Perturbations Are Not Enough: Generating Adversarial Examples with Spatial Distortions",
                    "ICLR 2020 submission"),
    "provable": Paper("Anonymous", "Provable Defenses against Spatially Transformed Adversarial Inputs: Impossibility "
                      "and Possibility Results", "ICLR 2019 submission"),
    "nguyen-thesis": Paper("C. Nguyen", "Two Approaches to Defend against Adversarial Examples: Attention-based and "
                           "Certificate-based", "MSc thesis, Lehigh University, 2018"),
    "smooth": Paper("H. Zhang, Y. Avrithis, T. Furon, L. Amsaleg", "Smooth Adversarial Examples",
                    "EURASIP Journal on Information Security, 2020"),
    "engstrom": Paper("L. Engstrom, B. Tran, D. Tsipras, L. Schmidt, A. Madry", "Exploring the Landscape of Spatial "
                      "Robustness", "ICML 2019"),
    "fgsm": Paper("I. Goodfellow, J. Shlens, C. Szegedy", "Explaining and Harnessing Adversarial Examples", "ICLR 2015"),
    "pgd": Paper("A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu", "Towards Deep Learning Models Resistant to "
                 "Adversarial Attacks", "ICLR 2018"),
    "cw": Paper("N. Carlini, D. Wagner", "Towards Evaluating the Robustness of Neural Networks", "IEEE S&P 2017"),
    "mim": Paper("Y. Dong, F. Liao, T. Pang, H. Su, J. Zhu, X. Hu, J. Li", "Boosting Adversarial Attacks with Momentum",
                 "CVPR 2018"),
    "ensemble": Paper("F. Tramèr, A. Kurakin, N. Papernot, I. Goodfellow, D. Boneh, P. McDaniel", "Ensemble Adversarial "
                      "Training: Attacks and Defenses", "ICLR 2018"),
    "kurakin-ll": Paper("A. Kurakin, I. Goodfellow, S. Bengio", "Adversarial Examples in the Physical World",
                        "ICLR 2017 workshop"),
    "bilateral": Paper("C. Tomasi, R. Manduchi", "Bilateral Filtering for Gray and Color Images", "ICCV 1998"),
    "sdp-nn": Paper("A. Raghunathan, J. Steinhardt, P. Liang", "Certified Defenses against Adversarial Examples",
                    "ICLR 2018"),
    "autoattack": Paper("F. Croce, M. Hein", "Reliable Evaluation of Adversarial Robustness with an Ensemble of Diverse "
                        "Parameter-free Attacks", "ICML 2020"),
    "cohen-smoothing": Paper("J. Cohen, E. Rosenfeld, J. Z. Kolter", "Certified Adversarial Robustness via Randomized "
                             "Smoothing", "ICML 2019"),
    "tss": Paper("L. Li, M. Weber, X. Xu, L. Rimanic, B. Kailkhura, T. Xie, C. Zhang, B. Li", "TSS: Transformation-Specific "
                 "Smoothing for Robustness Certification", "ACM CCS 2021"),
    "deformrs": Paper("M. Alfarra, A. Bibi, N. Khan, P. H. S. Torr, B. Ghanem", "DeformRS: Certifying Input Deformations "
                      "with Randomized Smoothing", "AAAI 2022"),
    "robustbench": Paper("F. Croce, M. Andriushchenko, V. Sehwag, E. Debenedetti, N. Flammarion, M. Chiang, P. Mittal, "
                         "M. Hein", "RobustBench: a standardized adversarial robustness benchmark",
                         "NeurIPS 2021 Datasets and Benchmarks Track"),
    "jsma": Paper("N. Papernot, P. McDaniel, S. Jha, M. Fredrikson, Z. B. Celik, A. Swami", "The Limitations of Deep "
                  "Learning in Adversarial Settings", "IEEE EuroS&P 2016"),
    "lan": Paper("C. Grimm, D. Arumugam, S. Karamcheti, D. Abel, L. L. S. Wong, M. L. Littman", "Modeling Latent "
                 "Attention Within Neural Networks", "arXiv:1706.00536, 2017"),
    "li-li": Paper("X. Li, F. Li", "Adversarial Examples Detection in Deep Networks with Convolutional Filter Statistics",
                   "ICCV 2017"),
    "defense-gan": Paper("P. Samangouei, M. Kabkab, R. Chellappa", "Defense-GAN: Protecting Classifiers Against "
                         "Adversarial Attacks Using Generative Models", "ICLR 2018"),
    "bpda": Paper("A. Athalye, N. Carlini, D. Wagner", "Obfuscated Gradients Give a False Sense of Security: Circumventing "
                  "Defenses to Adversarial Examples", "ICML 2018"),
    "wgan-gp": Paper("I. Gulrajani, F. Ahmed, M. Arjovsky, V. Dumoulin, A. Courville", "Improved Training of Wasserstein "
                     "GANs", "NeurIPS 2017"),
    "cw-detect": Paper("N. Carlini, D. Wagner", "Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection "
                       "Methods", "ACM AISec 2017"),
    "cam": Paper("B. Zhou, A. Khosla, A. Lapedriza, A. Oliva, A. Torralba", "Learning Deep Features for Discriminative "
                 "Localization", "CVPR 2016"),
    "grad-cam": Paper("R. R. Selvaraju, M. Cogswell, A. Das, R. Vedantam, D. Parikh, D. Batra", "Grad-CAM: Visual "
                      "Explanations from Deep Networks via Gradient-based Localization", "ICCV 2017"),
    "captum": Paper("N. Kokhlikyan, V. Miglani, M. Martin, E. Wang, B. Alsallakh, J. Reynolds, A. Melnikov, N. Kliushkina, "
                    "C. Araya, S. Yan, O. Reblitz-Richardson", "Captum: A unified and generic model interpretability "
                    "library for PyTorch", "arXiv:2009.07896, 2020"),
}


def cite(key: str) -> str:
    """The Markdown citation of ``PAPERS[key]``.

    Raises:
        KeyError: unknown key (the message lists the known ones).
    """
    if key not in PAPERS:
        raise KeyError(f"unknown paper {key!r}; known: {sorted(PAPERS)}")
    return str(PAPERS[key])
