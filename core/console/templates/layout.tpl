<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}} · Switchboard console</title>
<link rel="stylesheet" href="{{c.base}}/static/console.css">
<link rel="icon" href="data:,">
</head>
<body>
<a class="skip" href="#main">Skip to the content</a>
<header class="top">
  <a class="brand" href="{{c.base}}/">Switchboard</a>
  % if c.user:
  <nav aria-label="Console">
    <ul>
    % for href, label, current in c.nav:
      % if current:
      <li><a href="{{href}}" aria-current="page">{{label}}</a></li>
      % else:
      <li><a href="{{href}}">{{label}}</a></li>
      % end
    % end
    </ul>
  </nav>
  <form method="post" action="{{c.base}}/logout" class="logout">
    <input type="hidden" name="_csrf" value="{{c.csrf}}">
    <button type="submit">Log out <span class="who">({{c.user}})</span></button>
  </form>
  % end
</header>
<main id="main" tabindex="-1"{{!' class="wide"' if c.wide else ''}}>
<h1>{{title}}</h1>
% for kind, text in c.flash:
<p class="flash {{kind}}" role="status">{{text}}</p>
% end
{{!base}}
</main>
</body>
</html>
