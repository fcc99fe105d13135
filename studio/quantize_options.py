"""The Quantize section of the Prune panel: off, int4 or int8, with the group size, the symmetry, GPTQ or
round-to-nearest, GPTQ's activation order and the joint pass inside SparseGPT's sweep. It builds the
`core.quantization.scheme.QuantScheme` a plan carries; the plan validates it (its message is shown)."""

from __future__ import annotations

from PySide6.QtGui import QIntValidator
from PySide6.QtWidgets import QCheckBox, QFormLayout, QGroupBox

from core.quantization.scheme import PER_CHANNEL, QuantScheme
from .combo import choice_combo

BITS = [("off", None), ("int4", 4), ("int8", 8)]
GROUPS = [("auto", None), ("per channel", PER_CHANNEL), ("32", 32), ("64", 64), ("128", 128)]
SYMMETRY = [("symmetric", True), ("asymmetric", False)]
METHODS = [("GPTQ", "gptq"), ("round to nearest", "rtn")]

BITS_TIP = ("Store the kept weights as 4- or 8-bit integer codes with a scale per group of inputs, after "
            "pruning (and recovery); pruned zeros stay exactly zero.\n"
            "Method none in the list above quantizes without pruning.")
GROUP_TIP = ("Inputs that share one scale (and zero point).\n"
             "auto: 128 where it divides a layer's inputs, else 64, else 32, else one per output channel.\n"
             "per channel: one scale per output row.\n"
             "Type another multiple of 8 if you like; a layer it does not divide stays unquantized.")
SYMMETRY_TIP = ("symmetric: the grid is centred on zero (zero point 0).\n"
                "asymmetric: an integer zero point per group, for groups whose weights lean to one side.")
METHOD_TIP = ("GPTQ: rounds one input column at a time and spreads each column's rounding error over the "
              "columns not yet rounded, using the calibration Hessian (as SparseGPT does for pruning).\n"
              "round to nearest: each weight to its nearest level; no calibration needed, larger error.")
ACT_ORDER_TIP = "GPTQ: round the columns with the largest activations first (decreasing Hessian diagonal)."
JOINT_TIP = ("Quantize inside SparseGPT's own column sweep, so pruning and quantization share one pass "
             "and each compensates the other's error. SparseGPT only; not with activation order or recovery.")


class QuantizeOptions(QGroupBox):
    def __init__(self, parent=None):
        super().__init__("Quantize", parent)
        self.bits = choice_combo(BITS, BITS_TIP)
        self.group_size = choice_combo(GROUPS, GROUP_TIP)
        self.group_size.setEditable(True)          # a custom group size; digits only
        self.group_size.lineEdit().setValidator(QIntValidator(0, 1 << 20, self.group_size))
        self.symmetric = choice_combo(SYMMETRY, SYMMETRY_TIP)
        self.method = choice_combo(METHODS, METHOD_TIP)
        self.act_order = QCheckBox("activation order")
        self.act_order.setToolTip(ACT_ORDER_TIP)
        self.joint = QCheckBox("joint with SparseGPT (one pass)")
        self.joint.setToolTip(JOINT_TIP)
        self.form = QFormLayout(self)
        self.form.addRow("Bits", self.bits)
        self.form.addRow("Group size", self.group_size)
        self.form.addRow("Grid", self.symmetric)
        self.form.addRow("Method", self.method)
        self.form.addRow("", self.act_order)
        self.form.addRow("", self.joint)
        self._pruning = "wanda"
        self._forced = False                 # int4 chosen by method none, not by the user: undone on leaving it
        self.bits.currentIndexChanged.connect(self._bits_chosen)
        for signal in (self.bits.currentIndexChanged, self.method.currentIndexChanged, self.act_order.toggled,
                       self.joint.toggled):
            signal.connect(self._update)
        self._update()

    @property
    def enabled(self) -> bool:
        return self.bits.currentData() is not None

    def set_pruning_method(self, method: str) -> None:
        """The pruning method chosen above: "none" forces quantization on; the joint pass needs SparseGPT."""
        self._pruning = method
        self.bits.model().item(0).setEnabled(method != "none")
        if method == "none" and not self.enabled:
            self._set_bits(4)
            self._forced = True
        elif method != "none" and self._forced:
            self._set_bits(None)
        self._update()

    def _set_bits(self, bits) -> None:
        self.bits.blockSignals(True)
        self.bits.setCurrentIndex(next(i for i, (_, b) in enumerate(BITS) if b == bits))
        self.bits.blockSignals(False)
        self._forced = False

    def _bits_chosen(self) -> None:
        self._forced = False

    def scheme(self, dampening: float | None = None) -> QuantScheme | None:
        """The scheme chosen, or None when quantization is off (`dampening`: GPTQ's, when given)."""
        if not self.enabled:
            return None
        extra = {} if dampening is None else {"dampening": dampening}
        return QuantScheme(bits=self.bits.currentData(), symmetric=self.symmetric.currentData(),
                           group_size=self.group_value(), method=self.method.currentData(),
                           act_order=self.act_order.isEnabled() and self.act_order.isChecked(),
                           joint=self.joint.isEnabled() and self.joint.isChecked(), **extra)

    def group_value(self) -> int | None:
        text = self.group_size.currentText().strip()
        index = self.group_size.findText(text)
        if index >= 0:
            return self.group_size.itemData(index)
        return int(text) if text.isdigit() else None        # the validator lets digits only through

    def state(self) -> dict:
        return {"quantize": self.bits.currentText(), "group_size": self.group_size.currentText(),
                "symmetric": self.symmetric.currentData(), "quant_method": self.method.currentData(),
                "act_order": self.act_order.isChecked(), "joint": self.joint.isChecked()}

    def restore_state(self, state: dict) -> None:
        """The choices `state()` gave, as they come back from QSettings (an INI file gives strings)."""
        index = self.bits.findText(str(state.get("quantize", "off")))
        if index >= 0 and self.bits.model().item(index).isEnabled():
            self.bits.setCurrentIndex(index)
        self.group_size.setCurrentText(str(state.get("group_size", "auto")))
        self.symmetric.setCurrentIndex(0 if _true(state.get("symmetric", True)) else 1)
        index = self.method.findData(str(state.get("quant_method", "gptq")))
        if index >= 0:
            self.method.setCurrentIndex(index)
        self.act_order.setChecked(_true(state.get("act_order", False)))
        self.joint.setChecked(_true(state.get("joint", False)))

    def _update(self) -> None:
        """The details only while quantizing; activation order and the joint pass only where they apply."""
        on = self.enabled
        for field in (self.group_size, self.symmetric, self.method, self.act_order, self.joint):
            self.form.setRowVisible(field, on)
        gptq = self.method.currentData() == "gptq"
        self.act_order.setEnabled(gptq and not self.joint.isChecked())
        joint_possible = self._pruning == "sparsegpt" and gptq and not self.act_order.isChecked()
        self.joint.setEnabled(joint_possible)
        if self._pruning != "sparsegpt":
            self.joint.setToolTip(JOINT_TIP + "\n\nChoose the sparsegpt method to use it.")
        else:
            self.joint.setToolTip(JOINT_TIP)


def _true(value) -> bool:
    return value is True or str(value).lower() in ("true", "1")

