// "Send to SadTalker": the WebUI moves the selected result image into the SadTalker tab's portrait (the button is
// registered in scripts/sadtalker_tab.py as a paste button whose target tab is "sadtalker"), then calls
// switch_to_sadtalker() to open the tab.

function switch_to_sadtalker() {
    var tab = gradioApp().getElementById("tab_sadtalker");
    var buttons = gradioApp().querySelectorAll("#tabs > .tab-nav > button");
    var found = Array.from(buttons).find(function(button) { return button.textContent.trim() === "SadTalker"; });
    if (!found && tab) {
        var items = Array.from(gradioApp().querySelectorAll("#tabs > .tabitem"));
        found = buttons[items.indexOf(tab)];
    }
    if (found) {
        found.click();
    }
    return Array.from(arguments);
}

onUiLoaded(function() {
    ["txt2img", "img2img", "extras"].forEach(function(tab) {
        var button = gradioApp().getElementById(tab + "_send_to_sadtalker");
        if (button) {
            button.title = "Send image to the SadTalker tab";
        }
    });
});
