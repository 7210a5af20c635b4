"""Texts of the reviewer console in English and German.

Every string the console shows comes from ``TEXTS``, so both languages must have the same keys and the same
``{placeholders}``. ``tests/ui/test_console.py`` checks both.
"""

from __future__ import annotations

LANGUAGES: dict[str, str] = {"en": "English", "de": "Deutsch"}
DEFAULT_LANGUAGE = "en"

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "page_title": "Recent inspections",
        "language": "Language / Sprache",
        "inspection_count": "Number of inspections",
        "inspection_count_help": "How many of the newest inspections to show (1 to {maximum}).",
        "camera": "Camera",
        "camera_placeholder": "all cameras",
        "camera_help": "Show only the images of this camera ID. Leave empty for all cameras.",
        "camera_invalid": (
            "Camera ID {camera!r} is invalid. Use 1 to 64 characters from A-Z, a-z, 0-9, dot, underscore, colon "
            "and hyphen, or clear the field to see all cameras."
        ),
        "settings_invalid": (
            "The console settings are invalid. Fix these NEARCAIPI_ environment variables and restart the console: "
            "{error}"
        ),
        "refresh": "Refresh",
        "refreshed_at": "Updated at {time}",
        "model_version": "Served model version: **{version}** ({backbone})",
        "no_model": (
            "No model version is promoted, so the API classifies no images. "
            "Train a model with `nearcaipi train`. The first model version is promoted automatically."
        ),
        "model_unknown": "The served model version could not be read: {error}",
        "api_unreachable": (
            "The inference API at {url} is unreachable ({error}). "
            "Check that the API is running, or set NEARCAIPI_API_URL to its address."
        ),
        "api_failed": "The inference API at {url} answered HTTP {status}: {message}",
        "no_inspections": "No inspections yet. Images appear here once a camera posts them to the API.",
        "no_inspections_camera": "No inspections from camera {camera!r}. Check the camera ID or clear the filter.",
        "summary": "{count} inspections shown, {nok} of them NOK.",
        "verdict_ok": "OK",
        "verdict_nok": "NOK",
        "verdict_missing": "no verdict",
        "camera_part": "Camera **{camera}** · part **{part}**",
        "unknown": "unknown",
        "received": "Received {time} · model version {version}",
        "explanation_done": "Explanation done in {seconds}",
        "explanation_flat": (
            "Explanation done, but flat: the model ignored the masks, so the overlay shows no evidence."
        ),
        "explanation_queued": "Explanation queued",
        "explanation_running": "Explanation running",
        "explanation_failed": "Explanation failed: {error}",
        "explanation_unknown": "Explanation status {status!r}",
        "explanation_missing": "No explanation requested",
        "caption_overlay": "Saliency map (InvRISE): red marks where hiding the image most changes the verdict.",
        "caption_flat": "Original image: the saliency map is flat and shows no evidence.",
        "caption_queued": "Original image: the explanation is queued.",
        "caption_running": "Original image: the explanation is being computed.",
        "caption_failed": "Original image: the explanation failed.",
        "caption_missing": "Original image: no explanation was requested.",
        "image_failed": "The image {image_id} could not be loaded from {url}: {error}",
    },
    "de": {
        "page_title": "Letzte Prüfungen",
        "language": "Language / Sprache",
        "inspection_count": "Anzahl Prüfungen",
        "inspection_count_help": "Wie viele der neuesten Prüfungen angezeigt werden (1 bis {maximum}).",
        "camera": "Kamera",
        "camera_placeholder": "alle Kameras",
        "camera_help": "Nur die Bilder dieser Kamera-ID zeigen. Leer lassen für alle Kameras.",
        "camera_invalid": (
            "Die Kamera-ID {camera!r} ist ungültig. Erlaubt sind 1 bis 64 Zeichen aus A-Z, a-z, 0-9, Punkt, "
            "Unterstrich, Doppelpunkt und Bindestrich. Zum Anzeigen aller Kameras das Feld leeren."
        ),
        "settings_invalid": (
            "Die Einstellungen der Konsole sind ungültig. Diese NEARCAIPI_-Umgebungsvariablen korrigieren und die "
            "Konsole neu starten: {error}"
        ),
        "refresh": "Aktualisieren",
        "refreshed_at": "Aktualisiert um {time}",
        "model_version": "Aktive Modellversion: **{version}** ({backbone})",
        "no_model": (
            "Keine Modellversion ist freigegeben, daher klassifiziert die API keine Bilder. "
            "Ein Modell mit `nearcaipi train` trainieren. Die erste Modellversion wird automatisch freigegeben."
        ),
        "model_unknown": "Die aktive Modellversion konnte nicht gelesen werden: {error}",
        "api_unreachable": (
            "Die Inferenz-API unter {url} ist nicht erreichbar ({error}). "
            "Prüfen, ob die API läuft, oder NEARCAIPI_API_URL auf ihre Adresse setzen."
        ),
        "api_failed": "Die Inferenz-API unter {url} antwortete mit HTTP {status}: {message}",
        "no_inspections": "Noch keine Prüfungen. Bilder erscheinen hier, sobald eine Kamera sie an die API sendet.",
        "no_inspections_camera": (
            "Keine Prüfungen von Kamera {camera!r}. Die Kamera-ID prüfen oder den Filter leeren."
        ),
        "summary": "{count} Prüfungen angezeigt, davon {nok} NOK.",
        "verdict_ok": "OK",
        "verdict_nok": "NOK",
        "verdict_missing": "kein Urteil",
        "camera_part": "Kamera **{camera}** · Teil **{part}**",
        "unknown": "unbekannt",
        "received": "Empfangen {time} · Modellversion {version}",
        "explanation_done": "Erklärung fertig in {seconds}",
        "explanation_flat": (
            "Erklärung fertig, aber flach: Das Modell hat die Masken ignoriert, "
            "daher zeigt die Überlagerung keine Hinweise."
        ),
        "explanation_queued": "Erklärung in der Warteschlange",
        "explanation_running": "Erklärung wird berechnet",
        "explanation_failed": "Erklärung fehlgeschlagen: {error}",
        "explanation_unknown": "Erklärungsstatus {status!r}",
        "explanation_missing": "Keine Erklärung angefordert",
        "caption_overlay": (
            "Saliency-Map (InvRISE): Rot markiert, wo das Verdecken des Bildes das Urteil am stärksten ändert."
        ),
        "caption_flat": "Originalbild: Die Saliency-Map ist flach und zeigt keine Hinweise.",
        "caption_queued": "Originalbild: Die Erklärung ist in der Warteschlange.",
        "caption_running": "Originalbild: Die Erklärung wird berechnet.",
        "caption_failed": "Originalbild: Die Erklärung ist fehlgeschlagen.",
        "caption_missing": "Originalbild: Es wurde keine Erklärung angefordert.",
        "image_failed": "Das Bild {image_id} konnte nicht von {url} geladen werden: {error}",
    },
}


def translate(language: str, key: str, **values: object) -> str:
    """Look up ``key`` in ``language`` and fill in its placeholders. An unknown language falls back to English."""
    texts = TEXTS.get(language, TEXTS[DEFAULT_LANGUAGE])
    return texts[key].format(**values)
