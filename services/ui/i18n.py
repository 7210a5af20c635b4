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
        "view": "Show",
        "view_recent": "Recent inspections",
        "view_queue": "Review queue",
        "queue_title": "Review queue",
        "queue_strategy": "Selection strategy",
        "queue_strategy_help": (
            "Which unreviewed images come first. Random add picks them at random. AL, Near AL, CAIPI and Near CAIPI "
            "put the least confident predictions first, those with p_nok nearest 0.5. The strategies differ only in "
            "what a training run learns from the reviews."
        ),
        "queue_size": "Number of images",
        "queue_size_help": "How many unreviewed images to show (1 to {maximum}).",
        "queue_summary": "{count} unreviewed images, least confident first ({strategy}).",
        "queue_summary_random": "{count} unreviewed images, chosen at random ({strategy}).",
        "queue_empty": (
            "The review queue is empty: every image that the served model version classified has a review."
        ),
        "not_reviewed": "Not reviewed yet",
        "review_state": "Reviewed as **{label}** (the model said {predicted}) by {reviewer}, {time}",
        "reviewer_anonymous": "an anonymous reviewer",
        "review_verdict": "explanation {verdict}",
        "explanation_right": "right",
        "explanation_wrong": "wrong",
        "explanation_not_judged": "not judged",
        "review_boxes": "defect boxes {boxes}",
        "review_no_boxes": "no defect boxes",
        "review_trained": "learnt in training run {run_id}",
        "review_not_trained": "not learnt yet",
        "review_comment": "Comment: {comment}",
        "review_saved": "Review {review_id} of image {image_id} saved: {label}, {verdict}.",
        "review_open": "Review · near hit and near miss",
        "neighbours_intro": (
            "Compared as **{label}** ({source}) with {count} images under model version {version}. "
            "The near hit is the most similar image of the same class, the near miss the most similar of the other."
        ),
        "neighbours_no_model": "Near hit and near miss need a promoted model version, and none is promoted.",
        "neighbours_failed": "Near hit and near miss could not be loaded: {error}",
        "source_review": "label from a review",
        "source_prediction": "predicted label",
        "near_hit": "Near hit",
        "near_miss": "Near miss",
        "near_hit_none": "No near hit: there is no other image of the same class.",
        "near_miss_none": "No near miss: there is no image of the other class.",
        "neighbour_caption": "{kind}: {label} ({source}), similarity {similarity}",
        "review_label": "Correct label",
        "review_label_help": (
            "What the part really is: OK, or NOK for a defective part. Preselected is the latest review, "
            "else the model's prediction."
        ),
        "review_explanation": "Explanation (saliency map)",
        "review_explanation_help": (
            "right: the red region lies on what decides the verdict, on a NOK part on the defect. "
            "wrong: it lies elsewhere, for example on the background, the fixture or an edge. "
            "not judged: no verdict on the explanation, for example while it is not done or flat."
        ),
        "review_boxes_input": "Defect boxes in pixels of the original image ({width} x {height})",
        "review_boxes_placeholder": "for example 120, 40, 180, 95; 300, 10, 340, 60",
        "review_boxes_help": (
            "Only with NOK. One box per defect as left, top, right, bottom, in pixels of the original image, which "
            "is {width} pixels wide and {height} pixels high. 0, 0 is the top left corner. Right and bottom are "
            "exclusive, so 0, 0, {width}, {height} covers the whole image. Separate several boxes with a semicolon."
        ),
        "review_reviewer": "Your name or initials",
        "review_reviewer_help": (
            "Stored with the review. 1 to 64 characters from A-Z, a-z, 0-9, dot, underscore, @ and hyphen. "
            "The console fills it in for your next reviews."
        ),
        "review_comment_input": "Comment (optional)",
        "review_submit": "Save review",
        "label_missing": "Choose the correct label, OK or NOK.",
        "box_not_numbers": (
            "Defect box {box!r} is invalid: enter four whole numbers left, top, right, bottom separated by commas, "
            "for example 120, 40, 180, 95."
        ),
        "box_unordered": ("Defect box {box!r} is invalid: it needs 0 <= left < right and 0 <= top < bottom."),
        "box_outside": (
            "Defect box {box!r} lies outside the image: it needs right <= {width} and bottom <= {height}, "
            "because the original image is {width} x {height} pixels."
        ),
        "too_many_boxes": "{count} defect boxes entered, but a review takes at most {maximum}. Merge nearby boxes.",
        "boxes_need_nok": "Defect boxes are only allowed with the label NOK. Choose NOK or clear the defect boxes.",
        "reviewer_invalid": (
            "Reviewer name {reviewer!r} is invalid. Use 1 to 64 characters from A-Z, a-z, 0-9, dot, underscore, "
            "@ and hyphen."
        ),
        "review_rejected": "The API rejected the review (HTTP {status}): {message}",
        "request_failed": "The request to the inference API failed: {error}",
        "learning": "Learn from reviews",
        "learning_intro": (
            "A training run fine-tunes the served model version on the training data plus all reviews so far. "
            "The new version replaces the served one only if its test MCC is at least as high."
        ),
        "training_strategy": "Strategy",
        "training_strategy_help": (
            "What the training run learns from the reviews. Random add and AL: the reviewed images with their "
            "labels. Near AL: also the near hit and near miss of each image whose prediction a reviewer corrected. "
            "CAIPI: also refutations generated from the reviewed images. Near CAIPI: the near hits and misses as "
            "well, and refutations of all of these."
        ),
        "train": "Start training run",
        "training_queued": (
            "Training run {run_id} queued with strategy {strategy}. It runs in the background: "
            "press Refresh to see its status."
        ),
        "training_rejected": "No training run started: {message}",
        "training_failed": "Starting the training run failed (HTTP {status}): {message}",
        "training_runs": "Recent training runs",
        "training_runs_failed": "The training runs could not be read: {error}",
        "no_training_runs": "No training runs yet.",
        "training_run": "**Run {run_id}** · {status} · {strategy} · {time}",
        "run_status_queued": "queued",
        "run_status_running": "running",
        "run_status_done": "done",
        "run_status_failed": "failed",
        "training_run_summary": (
            "{reviewed} reviewed images, {neighbours} near hits and misses, {refutations} refutations"
        ),
        "training_run_model": "model version {version}",
        "training_run_error": "error: {error}",
        "rollback_title": "Roll back to an earlier version",
        "rollback_version": "Model version",
        "rollback_placeholder": "for example 6",
        "rollback_help": (
            "The model version to promote, for example an earlier one when the newest judges worse on the line. "
            "The promoted version classifies every new image."
        ),
        "rollback": "Promote version",
        "rollback_missing": "Enter the model version to promote.",
        "rollback_done": "Model version {version} is promoted and classifies new images from now on.",
        "rollback_failed": "Promoting model version {version} failed (HTTP {status}): {message}",
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
        "view": "Anzeigen",
        "view_recent": "Letzte Prüfungen",
        "view_queue": "Review-Warteschlange",
        "queue_title": "Review-Warteschlange",
        "queue_strategy": "Auswahlstrategie",
        "queue_strategy_help": (
            "Welche ungeprüften Bilder zuerst kommen. Random add wählt sie zufällig aus. AL, Near AL, CAIPI und "
            "Near CAIPI zeigen die unsichersten Vorhersagen zuerst, also die mit p_nok am nächsten an 0,5. Die "
            "Strategien unterscheiden sich nur darin, was ein Trainingslauf aus den Reviews lernt."
        ),
        "queue_size": "Anzahl Bilder",
        "queue_size_help": "Wie viele ungeprüfte Bilder angezeigt werden (1 bis {maximum}).",
        "queue_summary": "{count} ungeprüfte Bilder, die unsichersten zuerst ({strategy}).",
        "queue_summary_random": "{count} ungeprüfte Bilder, zufällig ausgewählt ({strategy}).",
        "queue_empty": (
            "Die Review-Warteschlange ist leer: Jedes Bild, das die aktive Modellversion klassifiziert hat, "
            "hat ein Review."
        ),
        "not_reviewed": "Noch kein Review",
        "review_state": "Geprüft als **{label}** (Modell: {predicted}) von {reviewer}, {time}",
        "reviewer_anonymous": "einer unbekannten Person",
        "review_verdict": "Erklärung {verdict}",
        "explanation_right": "stimmt",
        "explanation_wrong": "falsch",
        "explanation_not_judged": "nicht beurteilt",
        "review_boxes": "Fehlerbereiche {boxes}",
        "review_no_boxes": "keine Fehlerbereiche",
        "review_trained": "gelernt in Trainingslauf {run_id}",
        "review_not_trained": "noch nicht gelernt",
        "review_comment": "Kommentar: {comment}",
        "review_saved": "Review {review_id} zu Bild {image_id} gespeichert: {label}, {verdict}.",
        "review_open": "Review · Near Hit und Near Miss",
        "neighbours_intro": (
            "Verglichen als **{label}** ({source}) mit {count} Bildern unter Modellversion {version}. "
            "Der Near Hit ist das ähnlichste Bild derselben Klasse, der Near Miss das ähnlichste der anderen."
        ),
        "neighbours_no_model": (
            "Für Near Hit und Near Miss muss eine Modellversion freigegeben sein, aber keine ist freigegeben."
        ),
        "neighbours_failed": "Near Hit und Near Miss konnten nicht geladen werden: {error}",
        "source_review": "Label aus einem Review",
        "source_prediction": "vorhergesagtes Label",
        "near_hit": "Near Hit",
        "near_miss": "Near Miss",
        "near_hit_none": "Kein Near Hit: Es gibt kein anderes Bild derselben Klasse.",
        "near_miss_none": "Kein Near Miss: Es gibt kein Bild der anderen Klasse.",
        "neighbour_caption": "{kind}: {label} ({source}), Ähnlichkeit {similarity}",
        "review_label": "Richtiges Label",
        "review_label_help": (
            "Was das Teil wirklich ist: OK, oder NOK für ein fehlerhaftes Teil. Vorausgewählt ist das letzte "
            "Review, sonst die Vorhersage des Modells."
        ),
        "review_explanation": "Erklärung (Saliency-Map)",
        "review_explanation_help": (
            "stimmt: Der rote Bereich liegt auf dem, was das Urteil entscheidet, bei einem NOK-Teil auf dem Fehler. "
            "falsch: Er liegt woanders, zum Beispiel auf dem Hintergrund, der Halterung oder einer Kante. "
            "nicht beurteilt: kein Urteil über die Erklärung, zum Beispiel solange sie nicht fertig oder flach ist."
        ),
        "review_boxes_input": "Fehlerbereiche in Pixeln des Originalbildes ({width} x {height})",
        "review_boxes_placeholder": "zum Beispiel 120, 40, 180, 95; 300, 10, 340, 60",
        "review_boxes_help": (
            "Nur bei NOK. Ein Rechteck pro Fehler als links, oben, rechts, unten, in Pixeln des Originalbildes, das "
            "{width} Pixel breit und {height} Pixel hoch ist. 0, 0 ist die linke obere Ecke. Die Spalte rechts und die "
            "Zeile unten gehören nicht mehr zum Rechteck, daher umfasst 0, 0, {width}, {height} das ganze Bild. "
            "Mehrere Rechtecke mit Semikolon trennen."
        ),
        "review_reviewer": "Ihr Name oder Kürzel",
        "review_reviewer_help": (
            "Wird mit dem Review gespeichert. 1 bis 64 Zeichen aus A-Z, a-z, 0-9, Punkt, Unterstrich, @ und "
            "Bindestrich. Die Konsole trägt ihn bei Ihren nächsten Reviews selbst ein."
        ),
        "review_comment_input": "Kommentar (optional)",
        "review_submit": "Review speichern",
        "label_missing": "Das richtige Label wählen: OK oder NOK.",
        "box_not_numbers": (
            "Der Fehlerbereich {box!r} ist ungültig: Vier ganze Zahlen links, oben, rechts, unten mit Kommas "
            "getrennt eingeben, zum Beispiel 120, 40, 180, 95."
        ),
        "box_unordered": (
            "Der Fehlerbereich {box!r} ist ungültig: Es muss 0 <= links < rechts und 0 <= oben < unten gelten."
        ),
        "box_outside": (
            "Der Fehlerbereich {box!r} liegt außerhalb des Bildes: Es muss rechts <= {width} und unten <= {height} "
            "gelten, weil das Originalbild {width} x {height} Pixel groß ist."
        ),
        "too_many_boxes": (
            "{count} Fehlerbereiche eingegeben, erlaubt sind höchstens {maximum} pro Review. "
            "Nahe beieinander liegende Bereiche zusammenfassen."
        ),
        "boxes_need_nok": (
            "Fehlerbereiche sind nur beim Label NOK erlaubt. NOK wählen oder die Fehlerbereiche leeren."
        ),
        "reviewer_invalid": (
            "Der Name {reviewer!r} ist ungültig. Erlaubt sind 1 bis 64 Zeichen aus A-Z, a-z, 0-9, Punkt, "
            "Unterstrich, @ und Bindestrich."
        ),
        "review_rejected": "Die API hat das Review abgelehnt (HTTP {status}): {message}",
        "request_failed": "Die Anfrage an die Inferenz-API ist fehlgeschlagen: {error}",
        "learning": "Aus Reviews lernen",
        "learning_intro": (
            "Ein Trainingslauf trainiert die aktive Modellversion mit den Trainingsdaten und allen bisherigen "
            "Reviews nach. Die neue Version ersetzt die aktive nur, wenn ihr Test-MCC mindestens so hoch ist."
        ),
        "training_strategy": "Strategie",
        "training_strategy_help": (
            "Was der Trainingslauf aus den Reviews lernt. Random add und AL: die geprüften Bilder mit ihren Labels. "
            "Near AL: dazu Near Hit und Near Miss jedes Bildes, dessen Vorhersage korrigiert wurde. CAIPI: dazu "
            "Widerlegungen, die aus den geprüften Bildern erzeugt werden. Near CAIPI: dazu die Near Hits und Misses "
            "und Widerlegungen von all diesen Bildern."
        ),
        "train": "Trainingslauf starten",
        "training_queued": (
            "Trainingslauf {run_id} mit Strategie {strategy} in die Warteschlange gestellt. Er läuft im "
            "Hintergrund: Aktualisieren drücken, um seinen Status zu sehen."
        ),
        "training_rejected": "Kein Trainingslauf gestartet: {message}",
        "training_failed": "Der Trainingslauf konnte nicht gestartet werden (HTTP {status}): {message}",
        "training_runs": "Letzte Trainingsläufe",
        "training_runs_failed": "Die Trainingsläufe konnten nicht gelesen werden: {error}",
        "no_training_runs": "Noch keine Trainingsläufe.",
        "training_run": "**Lauf {run_id}** · {status} · {strategy} · {time}",
        "run_status_queued": "in der Warteschlange",
        "run_status_running": "läuft",
        "run_status_done": "fertig",
        "run_status_failed": "fehlgeschlagen",
        "training_run_summary": (
            "{reviewed} geprüfte Bilder, {neighbours} Near Hits und Misses, {refutations} Widerlegungen"
        ),
        "training_run_model": "Modellversion {version}",
        "training_run_error": "Fehler: {error}",
        "rollback_title": "Auf eine frühere Version zurückgehen",
        "rollback_version": "Modellversion",
        "rollback_placeholder": "zum Beispiel 6",
        "rollback_help": (
            "Die freizugebende Modellversion, zum Beispiel eine frühere, wenn die neueste an der Linie schlechter "
            "urteilt. Die freigegebene Version klassifiziert jedes neue Bild."
        ),
        "rollback": "Version freigeben",
        "rollback_missing": "Die freizugebende Modellversion eingeben.",
        "rollback_done": "Modellversion {version} ist freigegeben und klassifiziert ab jetzt neue Bilder.",
        "rollback_failed": ("Die Modellversion {version} konnte nicht freigegeben werden (HTTP {status}): {message}"),
    },
}


def translate(language: str, key: str, **values: object) -> str:
    """Look up ``key`` in ``language`` and fill in its placeholders. An unknown language falls back to English."""
    texts = TEXTS.get(language, TEXTS[DEFAULT_LANGUAGE])
    return texts[key].format(**values)
